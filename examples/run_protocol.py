#!/usr/bin/env python
"""Run the paper's experiments with one command per table: train every split (`accelerate launch
examples/train.py ... --split_index k --output_dir OUT/<run>/split_k`), score them with `examples/evaluate.py`, and
write a Markdown table of the medians beside the numbers the paper reports (OUT/table_<n>.md).

    # Table 1: the six datasets with LIQE's labels on the paper's 80/20 split, 10 splits, median SRCC/PLCC
    python examples/run_protocol.py --table 1 --liqe_root /data/LIQE/IQA_Database --output_dir runs
    # Table 3 (cross-dataset, reuses Table 1's models), 4 (ablations), 5 (20/40/60 % of the data), 6 (prompt lengths)
    python examples/run_protocol.py --table 4 --liqe_root /data/LIQE/IQA_Database --output_dir runs
    # today's benchmark: trained on KonIQ-10k's official training split, tested on KonIQ's test split, SPAQ,
    # KADID-10k, LIVE Challenge and AGIQA-3K (official layouts), beside LIQE, Q-Align and DeQA-Score's published figures
    python examples/run_protocol.py --table koniq-cross --output_dir runs --data_dir koniq10k=/data/koniq10k \
        --data_dir spaq=/data/SPAQ --data_dir kadid10k=/data/kadid10k --data_dir livec=/data/ChallengeDB_release \
        --data_dir agiqa3k=/data/AGIQA-3K
    # the first GPU hour: one split of KonIQ-10k and of LIVE Challenge, score-loss scale 1 and 10, flips on and off
    python examples/run_protocol.py --pilot --liqe_root /data/LIQE/IQA_Database --output_dir runs
    # any other experiment: the splits of one train.py command
    python examples/run_protocol.py --output_dir runs/mine --num_splits 10 -- --train_dir my_folder

Images are looked for where LIQE keeps them, in `--liqe_root/<dataset folder>`; `--data_root` (same layout) or
`--data_dir live=/data/databaserelease2` point elsewhere. Everything after `--` goes to every train.py command.
Finished splits (with all_results.json) are not trained again; `--dry_run` prints the commands only.

Before running anything it prints what the runs will cost: their number, the disk they take (adapter-only models and
at most one checkpoint per run: `--save_adapter_only --checkpoints_total_limit 1` go to every train.py command) and
GPU-hours at `--seconds_per_crop`. Every table puts MP-IQE beside zero-shot CLIP-IQA and the linear probe
(`evaluate.py --baselines`, on the same images), and reports each experiment's final epoch (median and mean over
splits) and, labelled optimistic, its best epoch on the test split (what the authors' code reports).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from mpiqe_hf.data import KONIQ_OFFICIAL_SIZES, get_dataset_spec
from mpiqe_hf.data.specs import canonical_dataset_name
from mpiqe_hf.training import run_script


HERE = Path(__file__).resolve().parent

DATASETS = ("live", "csiq", "kadid10k", "livec", "bid", "koniq10k")
TITLES = {
    "live": "LIVE",
    "csiq": "CSIQ",
    "kadid10k": "KADID",
    "livec": "LIVEC",
    "bid": "BID",
    "koniq10k": "KonIQ",
    "spaq": "SPAQ",
    "agiqa3k": "AGIQA-3K",
}
# Images per dataset (the published counts; the embedded synthetic set's 336), for the cost estimate.
DATASET_IMAGES = {
    "live": 779,
    "csiq": 866,
    "kadid10k": 10125,
    "livec": 1162,
    "bid": 586,
    "koniq10k": 10073,
    "spaq": 11125,
    "agiqa3k": 2982,
    "synthetic": 336,
}
# The assumed cost of one training crop (forward and backward of ViT-B/16 with MP-IQE's prompts, its share of the
# step's text encoding and data loading) on one GPU; an evaluation crop (forward only) counts a third of it.
# An assumption, not a measurement: train.py prints its own measured seconds per crop when it starts.
SECONDS_PER_CROP = 0.005
# train.py options that keep a run's disk small: models and checkpoints hold MP-IQE's trained weights only, and at
# most the last checkpoint is kept.
DISK_OPTIONS = ("--save_adapter_only", "--checkpoints_total_limit", "1")
OPTIMISTIC = "optimistic (best epoch on the test split, as the authors' code reports)"
# MP-IQE's numbers in the paper, as (PLCC, SRCC), or SRCC alone for Table 3.
PAPER_TABLE_1 = {
    "live": (0.980, 0.978),
    "csiq": (0.968, 0.961),
    "kadid10k": (0.944, 0.941),
    "livec": (0.916, 0.900),
    "bid": (0.887, 0.862),
    "koniq10k": (0.904, 0.898),
}
PAPER_TABLE_3 = {
    ("livec", "koniq10k"): 0.781,
    ("koniq10k", "livec"): 0.844,
    ("live", "csiq"): 0.783,
    ("csiq", "live"): 0.935,
}
ABLATIONS = {  # Table 4: variant -> (config overrides, paper CSIQ (PLCC, SRCC), paper LIVEC (PLCC, SRCC))
    "MP-IQE": (None, (0.968, 0.961), (0.916, 0.900)),
    "w/o Scene prompts": ("use_scene_prompts=false", (0.965, 0.956), (0.913, 0.882)),
    "w/o Distortion prompts": ("use_distortion_prompts=false", (0.961, 0.953), (0.911, 0.884)),
    "w/o Deep visual prompts": ("visual_prompt_depth=0", (0.947, 0.932), (0.893, 0.874)),
    "Shallow visual prompts": ("visual_prompt_depth=1", (0.956, 0.947), (0.905, 0.888)),
}
PAPER_TABLE_5 = {
    0.2: {"live": (0.960, 0.956), "livec": (0.845, 0.808)},
    0.4: {"live": (0.974, 0.972), "livec": (0.889, 0.856)},
    0.6: {"live": (0.975, 0.973), "livec": (0.904, 0.880)},
}
PAPER_TABLE_6 = {  # (prompt, length) -> {dataset: (PLCC, SRCC)}
    ("text", 2): {"live": (0.977, 0.974), "csiq": (0.964, 0.956)},
    ("text", 4): {"live": (0.979, 0.975), "csiq": (0.963, 0.953)},
    ("text", 8): {"live": (0.980, 0.978), "csiq": (0.968, 0.961)},
    ("text", 16): {"live": (0.980, 0.978), "csiq": (0.963, 0.952)},
    ("visual", 1): {"live": (0.978, 0.974), "csiq": (0.965, 0.957)},
    ("visual", 2): {"live": (0.978, 0.975), "csiq": (0.969, 0.961)},
    ("visual", 4): {"live": (0.980, 0.978), "csiq": (0.968, 0.961)},
    ("visual", 8): {"live": (0.978, 0.974), "csiq": (0.967, 0.959)},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--table",
        choices=["1", "3", "4", "5", "6", "koniq-cross"],
        default=None,
        help=(
            "Reproduce this table of the paper, or koniq-cross: trained on KonIQ-10k's official training split, tested "
            "on KonIQ's test split, SPAQ, KADID-10k, LIVE Challenge and AGIQA-3K (each from --data_dir NAME=PATH, "
            "official layouts) beside published figures (default: the splits of the train.py command after --)."
        ),
    )
    what.add_argument(
        "--pilot",
        action="store_true",
        help=(
            "The first GPU hour: one split of KonIQ-10k and of LIVE Challenge with the paper preset, score-loss scale 1 "
            "and 10, flips on and off, beside both baselines: which recipe to run Table 1 with."
        ),
    )
    parser.add_argument("--output_dir", required=True, help="Runs go to OUTPUT_DIR/<run>/split_<k>.")
    parser.add_argument("--liqe_root", type=str, default=None, help="LIQE's IQA_Database folder (label files).")
    parser.add_argument(
        "--data_root",
        type=str,
        default=None,
        help="Folder holding each dataset's images in its LIQE folder name (default: --liqe_root).",
    )
    parser.add_argument(
        "--data_dir",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="Image folder of one dataset (repeatable); with --table koniq-cross, the dataset's official release.",
    )
    parser.add_argument(
        "--num_splits",
        type=int,
        default=None,
        help="Splits per experiment (10; --pilot: 1); with --table koniq-cross, training runs of seeds 1.. (1).",
    )
    parser.add_argument("--first_split", type=int, default=1)
    parser.add_argument("--launch_args", type=str, default="", help="Options for `accelerate launch`.")
    parser.add_argument("--evaluate_args", type=str, default="", help="Extra options for evaluate.py.")
    parser.add_argument(
        "--seconds_per_crop",
        type=float,
        default=SECONDS_PER_CROP,
        help=(
            f"Assumed GPU seconds per training crop for the cost estimate (default {SECONDS_PER_CROP}, not measured; "
            "train.py prints the measured value when it starts). Evaluation crops count a third."
        ),
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the costs and commands without running them.")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then options for every train.py command.")
    args = parser.parse_args(argv)
    if args.train_args and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    if args.num_splits is None:
        args.num_splits = 1 if args.pilot or args.table == "koniq-cross" else 10
    if not math.isfinite(args.seconds_per_crop) or args.seconds_per_crop <= 0:
        parser.error(f"--seconds_per_crop must be positive, got {args.seconds_per_crop}.")
    if not 1 <= args.first_split <= args.first_split + args.num_splits - 1 <= 10:
        parser.error("splits must lie in 1..10.")
    if args.table == "koniq-cross" and "koniq10k" not in data_dirs(args):
        parser.error(
            "--table koniq-cross needs --data_dir koniq10k=PATH (KonIQ-10k with koniq10k_distributions_sets.csv)."
        )
    if (args.table not in (None, "koniq-cross") or args.pilot) and args.liqe_root is None:
        what = f"--table {args.table}" if args.table is not None else "--pilot"
        parser.error(f"{what} needs --liqe_root (LIQE's IQA_Database folder with the label files).")
    for option in ("liqe_root", "data_root"):  # a dry run only prints the commands
        folder = getattr(args, option)
        if folder is not None and not args.dry_run and not Path(folder).is_dir():
            parser.error(f"--{option} {folder}: no such folder.")
    if any("=" not in item for item in args.data_dir):
        parser.error("--data_dir takes DATASET=PATH.")
    known = dict.fromkeys(DATASETS + KONIQ_CROSS_TESTS)
    unknown = [name for name in data_dirs(args) if name not in known]
    if unknown:
        parser.error(f"--data_dir {', '.join(unknown)}=...: unknown dataset; known: {', '.join(known)}.")
    # Even for a dry run, whose plan would otherwise list commands that fail (a test set's typo showing only after
    # the training).
    missing = [f"{name}={path}" for name, path in data_dirs(args).items() if not Path(path).is_dir()]
    if missing:
        parser.error(f"--data_dir {', '.join(missing)}: no such folder.")
    return args


def data_dirs(args) -> dict:
    """`--data_dir NAME=PATH` options by dataset name (aliases such as koniq or AGIQA-3K resolved)."""
    folders = {}
    for item in args.data_dir:
        name, _, path = item.partition("=")
        folders[canonical_dataset_name(name) or name] = path
    return folders


def load_train_script():
    """examples/train.py as a module: its parser reads (and checks) every run's options before any run starts."""
    spec = importlib.util.spec_from_file_location("mpiqe_run_protocol_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # HfArgumentParser resolves the dataclasses' annotations through it
    spec.loader.exec_module(module)
    return module


def train_options(train_script) -> set:
    """The option names (dataclass fields) that this checkout's train.py knows."""
    return {
        f.name
        for cls in (train_script.DataArguments, train_script.ModelArguments, train_script.TrainArguments)
        for f in fields(cls)
    }


def merged_config_overrides(experiment_args, user_args):
    """
    `experiment_args` then `user_args`, with one `--config_overrides` joining both's (the user's fields last, so they
    win a field both set): train.py keeps only its last `--config_overrides`, and an experiment's own (the ablation
    of Table 4, the pilot's score-loss scale) must survive the user's `-- --config_overrides ...`.
    """
    overrides, rest = [], []
    for args in (experiment_args, user_args):
        args = list(args)
        while "--config_overrides" in args:
            at = args.index("--config_overrides")
            if at + 1 == len(args):
                raise ValueError("--config_overrides needs a value (PretrainedConfig.update_from_string syntax).")
            overrides.append(args[at + 1])
            del args[at : at + 2]
        rest.extend(args)
    return rest + (["--config_overrides", ",".join(overrides)] if overrides else [])


class Runner:
    """
    Trains and scores the experiments of a table. `planning=True` runs and prints nothing: it only lists the
    training runs still to do in `planned` (`(run, split folder, train.py options but the disk options)`), for the
    cost estimate.
    `experiments` collects `(label, evaluate.py summary or None)` of every experiment, for the summary table.
    """

    def __init__(self, args, disk_options=DISK_OPTIONS, planning=False):
        self.args = args
        self.out = Path(args.output_dir)
        self.splits = list(range(args.first_split, args.first_split + args.num_splits))
        self.data_dirs = data_dirs(args)
        self.disk_options = list(disk_options)
        self.planning = planning
        self.planned, self.experiments, self.already_trained = [], [], 0
        self.cross_evaluations = []  # (experiment folder, dataset) of every --protocol cross scoring, for the costs

    def run(self, command):
        if self.planning:
            return
        print("+", shlex.join(command), flush=True)
        if not self.args.dry_run:
            subprocess.run(command, check=True)

    def dataset_args(self, name):
        """train.py options for a dataset with LIQE's labels on the paper's split (the protocol of Tables 1-6)."""
        folder = get_dataset_spec(name).liqe_folder
        data_dir = self.data_dirs.get(name) or str(Path(self.args.data_root or self.args.liqe_root) / folder)
        return [
            "--dataset_name",
            name,
            "--data_dir",
            data_dir,
            "--label_file",
            str(Path(self.args.liqe_root) / folder),
            "--split_protocol",
            "paper",
        ]

    def train(self, run, train_args, seeded=False):
        """Trains the splits of one experiment into OUTPUT_DIR/<run>/split_<k>; returns their folders. `seeded`: the
        split is fixed (KonIQ's official one), so run k differs from the others by its `--seed k` instead."""
        folders = []
        for k in self.splits:
            split_dir = self.out / run / f"split_{k}"
            folders.append(split_dir)
            if (split_dir / "all_results.json").is_file():
                self.already_trained += 1
                if not self.planning:
                    print(f"{run} split {k}: already trained in {split_dir}")
                continue
            experiment_args = [*train_args, "--seed", str(k)] if seeded else train_args
            options = [
                *merged_config_overrides(experiment_args, self.args.train_args),
                "--split_index",
                str(k),
                "--output_dir",
                str(split_dir),
            ]
            if split_dir.is_dir() and any(split_dir.iterdir()):
                # An unfinished run (no all_results.json): it starts over, as train.py refuses a non-empty folder.
                options.append("--overwrite_output_dir")
            self.planned.append((run, split_dir, options))
            # --quiet: the child's own one-line error is the message, without accelerate's traceback after it. The
            # disk options first, so that options after `--` can override them.
            self.run(
                [
                    sys.executable,
                    "-m",
                    "accelerate.commands.launch",
                    "--quiet",
                    *shlex.split(self.args.launch_args),
                    str(HERE / "train.py"),
                    *self.disk_options,
                    *options,
                ]
            )
        return folders

    def evaluate(self, name, folders, *extra):
        """Scores `folders` with evaluate.py, baselines included, into OUTPUT_DIR/evaluation/<name>; returns its
        summary (None when nothing runs)."""
        out = self.out / "evaluation" / name  # name "" for the splits of a plain train.py command
        if self.planning and "cross" in extra:
            self.cross_evaluations.append((Path(folders[0]).parent, extra[extra.index("--dataset_name") + 1]))
        self.run(
            [
                sys.executable,
                str(HERE / "evaluate.py"),
                "--model_name_or_path",
                *map(str, folders),
                "--output_dir",
                str(out),
                "--baselines",
                *extra,
                *shlex.split(self.args.evaluate_args),
            ]
        )
        if self.planning or self.args.dry_run:
            return None
        summary = json.loads((out / "results.json").read_text())
        for metric in ("srcc", "plcc"):
            summary[f"mean_{metric}"] = statistics.mean(m[metric] for m in summary["per_model"])
        return summary

    def splits_median(self, run, train_args, label=None):
        """Trains and scores the splits of one experiment; its summary also holds the optimistic best epochs."""
        folders = self.train(run, train_args)
        summary = self.evaluate(run, folders, "--protocol", "paper_splits")
        if summary is not None:
            summary.update(best_epochs(folders))
        self.experiments.append((label or run or "the splits of the train.py command", summary))
        return summary


def best_epochs(folders) -> dict:
    """
    Each split's best epoch by SRCC in its `eval_history.json` (train.py's evaluation of every epoch; with the
    paper's 80/20 protocol that is the test part): `optimistic_{median,mean}_{srcc,plcc}` over the splits that have
    one, and `optimistic_epochs`.
    """
    best = []
    for folder in folders:
        history = Path(folder) / "eval_history.json"
        entries = json.loads(history.read_text()) if history.is_file() else []
        if entries:
            best.append(max(entries, key=lambda entry: entry["srcc"]))
    result = {"optimistic_epochs": [entry["epoch"] for entry in best]}
    for metric in ("srcc", "plcc"):
        values = [entry[metric] for entry in best]
        result[f"optimistic_median_{metric}"] = statistics.median(values) if values else None
        result[f"optimistic_mean_{metric}"] = statistics.mean(values) if values else None
    return result


def _cell(summary, key="median_srcc"):
    value = None if summary is None else summary.get(key)
    return "—" if value is None else f"{value:.3f}"


def _pair(summary, prefix=""):
    return f"{_cell(summary, prefix + 'median_plcc')} | {_cell(summary, prefix + 'median_srcc')}"


def _slash(summary, prefix, statistic="median"):
    return f"{_cell(summary, f'{prefix}{statistic}_plcc')} / {_cell(summary, f'{prefix}{statistic}_srcc')}"


def experiments_table(experiments):
    """Every experiment beside both baselines on the same splits: final epoch (median and mean over the splits) and,
    labelled optimistic, the best epoch on the test split; PLCC / SRCC."""
    rows = [
        f"| experiment | MP-IQE final epoch, median | MP-IQE final epoch, mean | {OPTIMISTIC}, median | "
        f"{OPTIMISTIC}, mean | CLIP-IQA (zero-shot), median | linear probe (ridge on the CLIP image embedding), "
        "median |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, summary in experiments:
        cells = [
            _slash(summary, ""),
            _slash(summary, "", "mean"),
            _slash(summary, "optimistic_"),
            _slash(summary, "optimistic_", "mean"),
            _slash(summary, "clip_iqa_"),
            _slash(summary, "linear_probe_"),
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def _size(num_bytes):
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def parameter_bytes(overrides, train_script):
    """fp32 bytes of MP-IQE's trained weights and of the whole model (frozen CLIP included): ViT-B/16 with the
    MPIQEConfig defaults and the run's --config_overrides, built on the meta device (no weights, no memory)."""
    import torch

    from mpiqe_hf import MPIQEConfig, MPIQEModel

    config = MPIQEConfig()
    config.update(train_script.config_overrides(overrides, config.clip_config))
    with torch.device("meta"):
        model = MPIQEModel(config)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * trained, 4 * sum(p.numel() for p in model.parameters())


def estimate_costs(planned, seconds_per_crop, train_script, disk_options, cross_evaluations=()) -> dict:
    """
    Disk and GPU time of the `planned` runs (`Runner.planned`): per run the final model and `best/` (adapter-only
    with `--save_adapter_only`, else full) and, with --checkpointing_steps, one checkpoint (its weights and Adam's two
    moments); GPU seconds = `seconds_per_crop` x (training crops + a third of the evaluation crops: train.py's
    evaluations and evaluate.py's model, CLIP-IQA and probe passes), from the dataset's image count (80/20 split, or
    KonIQ's official 7,058/1,000/2,015), plus, for each `(experiment folder, dataset)` of `cross_evaluations`
    (`Runner.cross_evaluations`), each of its runs' three passes over that dataset and the probe's over the training
    part.
    """
    sizes, disk, seconds, unknown, crops = {}, 0, 0.0, [], [0, 0]
    for _run, split_dir, options in planned:
        data_args, model_args, args = train_script.parse_args(options)
        if model_args.config_overrides not in sizes:
            sizes[model_args.config_overrides] = parameter_bytes(model_args.config_overrides, train_script)
        adapter, full = sizes[model_args.config_overrides]
        adapter_only = "--save_adapter_only" in disk_options
        disk += 2 * (adapter if adapter_only else full)
        if args.checkpointing_steps is not None:
            disk += (adapter if adapter_only else full) + 2 * adapter
        name = data_args.dataset_name and canonical_dataset_name(data_args.dataset_name)
        images = DATASET_IMAGES.get(name)
        if images is None:
            unknown.append(str(split_dir))
            continue
        if data_args.split_protocol == "official":
            train_images = round(KONIQ_OFFICIAL_SIZES["training"] * data_args.train_fraction)
            validation_images, test_images = KONIQ_OFFICIAL_SIZES["validation"], KONIQ_OFFICIAL_SIZES["test"]
        else:
            train_images = round(0.8 * images * data_args.train_fraction)
            validation_images = test_images = images - round(0.8 * images)
        if data_args.max_train_samples is not None:
            train_images = min(train_images, data_args.max_train_samples)
        train_crops = train_images * model_args.num_crops * args.num_train_epochs
        if args.max_train_steps is not None:
            batch = (args.per_device_train_batch_size or get_dataset_spec(name).batch_size) * (
                model_args.num_crops if model_args.crop_sampling == "per_image" else 1
            )
            train_crops = min(train_crops, args.max_train_steps * batch)
        eval_crops = model_args.eval_num_crops or model_args.num_crops
        evaluations = -(-args.num_train_epochs // args.eval_every_epoch)
        forward_crops = eval_crops * (evaluations * validation_images + 3 * test_images + train_images)
        # this model scored on other datasets: each one's images three times, the probe's training part once more
        for experiment, dataset in cross_evaluations:
            if experiment == split_dir.parent:
                forward_crops += eval_crops * (3 * DATASET_IMAGES[dataset] + train_images)
        crops[0] += train_crops
        crops[1] += forward_crops
        seconds += seconds_per_crop * (train_crops + forward_crops / 3)
    adapter, full = next(iter(sizes.values()), (0, 0))
    return {
        "runs": len(planned),
        "disk_bytes": disk,
        "gpu_hours": seconds / 3600,
        "train_crops": crops[0],
        "eval_crops": crops[1],
        "unknown": unknown,
        "model_bytes": adapter if "--save_adapter_only" in disk_options else full,
    }


def print_costs(costs, args, already, disk_options):
    """What the runs will take (`estimate_costs`), printed before any of them starts."""
    out = Path(args.output_dir)
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    each = "adapter-only" if disk_options else "full models: this train.py lacks --save_adapter_only"
    lines = [f"Before starting: {costs['runs']} training run(s) to do ({already} already trained)."]
    if costs["runs"]:
        lines.append(
            f"  disk: about {_size(costs['disk_bytes'])} for the new runs ({each}: final model and best/ of "
            f"{_size(costs['model_bytes'])} each, plus at most one "
            f"checkpoint with --checkpointing_steps); {_size(free)} free in {existing}"
            + ("  -- NOT ENOUGH" if costs["disk_bytes"] > free else "")
        )
        lines.append(
            f"  GPU: about {costs['gpu_hours']:.1f} GPU-hour(s): {costs['train_crops'] / 1e6:.2f} M training crops "
            f"and {costs['eval_crops'] / 1e6:.2f} M evaluation crops at an assumed {args.seconds_per_crop:g} s per "
            "training crop (--seconds_per_crop; train.py prints the measured value when it starts)"
        )
        if costs["unknown"]:
            lines.append(
                f"  (no image count known for {len(costs['unknown'])} run(s), left out of the GPU time: "
                f"{costs['unknown'][0]}, ...)"
            )
    print("\n".join(lines), flush=True)


def table_1(runner):
    rows = [
        "| dataset | PLCC (ours) | SRCC (ours) | CLIP-IQA PLCC | CLIP-IQA SRCC | linear probe PLCC | linear probe "
        "SRCC | PLCC (paper) | SRCC (paper) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in DATASETS:
        summary = runner.splits_median(name, runner.dataset_args(name), label=TITLES[name])
        plcc, srcc = PAPER_TABLE_1[name]
        rows.append(
            f"| {TITLES[name]} | {_pair(summary)} | {_pair(summary, 'clip_iqa_')} | "
            f"{_pair(summary, 'linear_probe_')} | {plcc:.3f} | {srcc:.3f} |"
        )
    return "Table 1: median over splits of the paper's 80/20 protocol, LIQE's labels", rows


def table_3(runner):
    rows = [
        "| training | testing | SRCC (ours) | CLIP-IQA SRCC | linear probe SRCC | SRCC (paper) |",
        "|---|---|---|---|---|---|",
    ]
    for (train, test), paper in PAPER_TABLE_3.items():
        folders = runner.train(train, runner.dataset_args(train))
        test_args = runner.dataset_args(test)[:6]  # the whole test dataset: no split
        # The probe is fitted on each model's own training part and scored on the other dataset, as the model is.
        summary = runner.evaluate(f"{train}_on_{test}", folders, "--protocol", "cross", *test_args)
        runner.experiments.append((f"{TITLES[train]} on {TITLES[test]} (cross-dataset)", summary))
        rows.append(
            f"| {TITLES[train]} | {TITLES[test]} | {_cell(summary)} | "
            f"{_cell(summary, 'clip_iqa_median_srcc')} | {_cell(summary, 'linear_probe_median_srcc')} | "
            f"{paper:.3f} |"
        )
    return "Table 3: cross-dataset SRCC, median over the models of the training dataset's splits", rows


def table_4(runner):
    rows = [
        "| variant | CSIQ PLCC | CSIQ SRCC | LIVEC PLCC | LIVEC SRCC | paper CSIQ | paper LIVEC |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, (overrides, paper_csiq, paper_livec) in ABLATIONS.items():
        cells = []
        for name in ("csiq", "livec"):
            extra = ["--config_overrides", overrides] if overrides else []
            run = name if overrides is None else f"{name}_{overrides.replace('=', '_')}"
            cells.append(
                _pair(runner.splits_median(run, runner.dataset_args(name) + extra, label=f"{TITLES[name]}: {variant}"))
            )
        rows.append(
            f"| {variant} | {' | '.join(cells)} | {paper_csiq[0]:.3f} / {paper_csiq[1]:.3f} | "
            f"{paper_livec[0]:.3f} / {paper_livec[1]:.3f} |"
        )
    return "Table 4: ablations (PLCC / SRCC)", rows


def table_5(runner):
    rows = [
        "| training set | LIVE PLCC | LIVE SRCC | LIVEC PLCC | LIVEC SRCC | paper LIVE | paper LIVEC |",
        "|---|---|---|---|---|---|---|",
    ]
    for fraction, paper in PAPER_TABLE_5.items():
        cells = [
            _pair(
                runner.splits_median(
                    f"{name}_fraction_{fraction}",
                    runner.dataset_args(name) + ["--train_fraction", str(fraction)],
                    label=f"{TITLES[name]}: {fraction:.0%} of the training part",
                )
            )
            for name in ("live", "livec")
        ]
        rows.append(
            f"| {fraction:.0%} | {' | '.join(cells)} | {paper['live'][0]:.3f} / {paper['live'][1]:.3f} | "
            f"{paper['livec'][0]:.3f} / {paper['livec'][1]:.3f} |"
        )
    return "Table 5: data efficiency (a fraction of the 80 % training part; PLCC / SRCC)", rows


def table_6(runner):
    rows = [
        "| prompt | length | LIVE PLCC | LIVE SRCC | CSIQ PLCC | CSIQ SRCC | paper LIVE | paper CSIQ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (prompt, length), paper in PAPER_TABLE_6.items():
        field = f"{prompt}_prompt_length={length}"
        cells = [
            _pair(
                runner.splits_median(
                    f"{name}_{prompt}_prompt_{length}",
                    runner.dataset_args(name) + ["--config_overrides", field],
                    label=f"{TITLES[name]}: {prompt} prompts of length {length}",
                )
            )
            for name in ("live", "csiq")
        ]
        rows.append(
            f"| {prompt} | {length} | {' | '.join(cells)} | {paper['live'][0]:.3f} / "
            f"{paper['live'][1]:.3f} | {paper['csiq'][0]:.3f} / {paper['csiq'][1]:.3f} |"
        )
    return "Table 6: prompt lengths (PLCC / SRCC)", rows


# --table koniq-cross: the test sets, in the order of the recent papers' tables (KonIQ's own test split first).
KONIQ_CROSS_TESTS = ("koniq10k", "spaq", "kadid10k", "livec", "agiqa3k")
NOT_VERIFIED = "n/a (not verified offline)"
DEQA_TABLE = (
    "DeQA-Score (You et al., CVPR 2025, arXiv:2501.11561), Table 3 (models trained on KonIQ-10k); transcribed from two "
    "public copies of that table that agree cell for cell (the paper itself was not readable offline): check "
    "against the paper before quoting"
)
# Published figures of models trained on KonIQ-10k's training split: method -> (source, {dataset: (PLCC, SRCC)}).
# A dataset missing from a method's figures prints NOT_VERIFIED. LIQE has no row in DeQA-Score's table, and no figures
# of LIQE trained on KonIQ-10k alone and tested on these sets were found offline: fill them from a paper that has them.
PUBLISHED_KONIQ_CROSS = {
    "LIQE": ("not found offline: fill from a paper that trains LIQE on KonIQ-10k alone and tests on these sets", {}),
    "Q-Align": (
        DEQA_TABLE,
        {
            "koniq10k": (0.941, 0.940),
            "spaq": (0.886, 0.887),
            "kadid10k": (0.674, 0.684),
            "livec": (0.853, 0.860),
            "agiqa3k": (0.772, 0.735),
        },
    ),
    "DeQA-Score": (
        DEQA_TABLE,
        {
            "koniq10k": (0.953, 0.941),
            "spaq": (0.895, 0.896),
            "kadid10k": (0.694, 0.687),
            "livec": (0.892, 0.879),
            "agiqa3k": (0.809, 0.729),
        },
    ),
}


def _published(figures, name):
    return NOT_VERIFIED if name not in figures else f"{figures[name][0]:.3f} / {figures[name][1]:.3f}"


def koniq_cross(runner):
    """Today's benchmark (Q-Align, DeQA-Score, Q-Insight): MP-IQE trained on KonIQ-10k's official training split (the
    epoch chosen on its validation split), scored on its test split and, whole, on SPAQ, KADID-10k, LIVE Challenge and
    AGIQA-3K in their official layouts, beside the published figures of PUBLISHED_KONIQ_CROSS. A test set without a
    --data_dir is skipped, saying so."""
    koniq = runner.data_dirs["koniq10k"]
    folders = runner.train(
        "koniq_official",
        [
            "--dataset_name",
            "koniq10k",
            "--data_dir",
            koniq,
            "--split_protocol",
            "official",
            "--load_best_model_at_end",
        ],
        seeded=True,
    )
    summaries = {}
    for name in KONIQ_CROSS_TESTS:
        if name == "koniq10k":  # each model on the test part of its own (official) split
            summary = runner.evaluate("koniq_official_on_koniq10k_test", folders, "--protocol", "paper_splits")
        elif name in runner.data_dirs:
            extra = ["--protocol", "cross", "--dataset_name", name, "--data_dir", runner.data_dirs[name]]
            if get_dataset_spec(name).max_image_size is not None:  # SPAQ at the scale the published figures used
                extra += ["--max_image_size", str(get_dataset_spec(name).max_image_size)]
            summary = runner.evaluate(f"koniq_official_on_{name}", folders, *extra)
        else:
            if not runner.planning:
                print(f"koniq-cross: {TITLES[name]} skipped: no --data_dir {name}=PATH given.", flush=True)
            summaries[name] = "skipped"
            continue
        summaries[name] = summary
    header = " | ".join(f"{TITLES[n]}{' test' if n == 'koniq10k' else ''}" for n in KONIQ_CROSS_TESTS)
    rows = [f"| method | {header} | source |", "|---" * (len(KONIQ_CROSS_TESTS) + 2) + "|"]
    ours = (
        ("MP-IQE", "", f"this run: median of {len(folders)} seed(s), each the best epoch on KonIQ's validation split"),
        ("CLIP-IQA (zero-shot, same CLIP)", "clip_iqa_", "this run, same images"),
        (
            "linear probe (ridge on the CLIP image embedding)",
            "linear_probe_",
            "this run, fitted on KonIQ's training split",
        ),
    )
    for label, prefix, source in ours:
        cells = [
            "skipped (no --data_dir)" if summaries[n] == "skipped" else _slash(summaries[n], prefix)
            for n in KONIQ_CROSS_TESTS
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {source} |")
    sources = list(dict.fromkeys(source for source, _ in PUBLISHED_KONIQ_CROSS.values()))
    for method, (source, figures) in PUBLISHED_KONIQ_CROSS.items():
        rows.append(
            f"| {method} (published) | "
            + " | ".join(_published(figures, n) for n in KONIQ_CROSS_TESTS)
            + f" | note {sources.index(source) + 1} |"
        )
    rows.append("")
    rows.extend(f"{i}. {source}" for i, source in enumerate(sources, start=1))
    return "KonIQ cross-dataset: trained on KonIQ-10k's official training split (PLCC / SRCC)", rows


PILOT_DATASETS = ("koniq10k", "livec")
PILOT_SCORE_LOSS_SCALES = (1, 10)


def pilot(runner):
    """The first GPU hour: which recipe to run Table 1 with. The paper preset on one split of KonIQ-10k and of LIVE
    Challenge, score-loss scale 1 and 10, flips on and off (explicitly both ways: train.py's default may change)."""
    for name in PILOT_DATASETS:
        for scale in PILOT_SCORE_LOSS_SCALES:
            for flip in (True, False):
                flips = "on" if flip else "off"
                runner.splits_median(
                    f"pilot/{name}_scale_{scale}_flip_{flips}",
                    runner.dataset_args(name)
                    + ["--config_overrides", f"score_loss_scale={scale}", "--horizontal_flip", str(flip)],
                    label=f"{TITLES[name]}, score-loss scale {scale}, flips {flips}",
                )
    return (
        "Pilot: the paper preset on KonIQ-10k and LIVE Challenge, score-loss scale 1 and 10, flips on and off, "
        "beside both baselines"
    ), None


def plain(runner):
    """The splits of the train.py command after `--`."""
    runner.splits_median("", [])
    return "The splits of the train.py command", None


TABLES = {"1": table_1, "3": table_3, "4": table_4, "5": table_5, "6": table_6, "koniq-cross": koniq_cross}


def main(argv=None):
    args = parse_args(argv)
    train_script = load_train_script()
    disk_options = DISK_OPTIONS
    if not {"save_adapter_only", "checkpoints_total_limit"} <= train_options(train_script):
        disk_options = ()
        print(
            "run_protocol: this train.py has no --save_adapter_only / --checkpoints_total_limit: every run keeps "
            "full models (the estimate below counts them)."
        )
    experiment = pilot if args.pilot else TABLES[args.table] if args.table is not None else plain
    planner = Runner(args, disk_options, planning=True)
    experiment(planner)
    costs = estimate_costs(
        planner.planned, args.seconds_per_crop, train_script, disk_options, planner.cross_evaluations
    )
    print_costs(costs, args, planner.already_trained, disk_options)

    runner = Runner(args, disk_options)
    title, rows = experiment(runner)
    what = "training run(s), seeds" if args.table == "koniq-cross" else "split(s):"
    splits = f"({len(runner.splits)} {what} {runner.splits[0]}..{runner.splits[-1]})"
    text = f"## {title}\n\n{splits}\n\n"
    if rows:
        text += "\n".join(rows) + "\n"
    if runner.experiments:  # koniq-cross has its baselines in its own table
        text += "\n### Every experiment beside the baselines (PLCC / SRCC)\n\n" if rows else ""
        text += "\n".join(experiments_table(runner.experiments)) + "\n"
    print(text)
    if experiment is plain:
        summary = runner.experiments[0][1]
        if summary is not None:
            print(
                f"median of {summary['num_models']} splits: SRCC {summary['median_srcc']:.3f}, "
                f"PLCC {summary['median_plcc']:.3f}"
            )
        return summary
    if not args.dry_run:
        path = runner.out / ("pilot.md" if args.pilot else f"table_{args.table}.md")
        path.write_text(text)
        print(f"written to {path}")
    return text


def run(argv=None):
    """main, with a failed step reported as one line (exit status 1): its own message is above it."""
    try:
        main(argv)
    except subprocess.CalledProcessError as err:
        sys.exit(
            f"run_protocol: a step failed with exit status {err.returncode} (its message is above): "
            f"{shlex.join(err.cmd)}\nThe runs that finished are kept; the same command continues from them."
        )


if __name__ == "__main__":
    sys.exit(run_script(run, prog="run_protocol.py"))
