#!/usr/bin/env python
"""Run the paper's experiments with one command per table: train every split (`accelerate launch
examples/train.py ... --split_index k --output_dir OUT/<run>/split_k`), score them with `examples/evaluate.py`, and
write a Markdown table of the medians beside the numbers the paper reports (OUT/table_<n>.md).

    # Table 1: the six datasets with LIQE's labels on the paper's 80/20 split, 10 splits, median SRCC/PLCC
    python examples/run_protocol.py --table 1 --liqe_root /data/LIQE/IQA_Database --output_dir runs
    # Table 3 (cross-dataset, reuses Table 1's models), 4 (ablations), 5 (20/40/60 % of the data), 6 (prompt lengths)
    python examples/run_protocol.py --table 4 --liqe_root /data/LIQE/IQA_Database --output_dir runs
    # any other experiment: the splits of one train.py command
    python examples/run_protocol.py --output_dir runs/mine --num_splits 10 -- --train_dir my_folder

Images are looked for where LIQE keeps them, in `--liqe_root/<dataset folder>`; `--data_root` (same layout) or
`--data_dir live=/data/databaserelease2` point elsewhere. Everything after `--` goes to every train.py command.
Finished splits (with all_results.json) are not trained again; `--dry_run` prints the commands only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from mpiqe_hf.data import get_dataset_spec

HERE = Path(__file__).resolve().parent

DATASETS = ("live", "csiq", "kadid10k", "livec", "bid", "koniq10k")
TITLES = {"live": "LIVE", "csiq": "CSIQ", "kadid10k": "KADID", "livec": "LIVEC", "bid": "BID", "koniq10k": "KonIQ"}
# MP-IQE's numbers in the paper, as (PLCC, SRCC), or SRCC alone for Table 3.
PAPER_TABLE_1 = {"live": (0.980, 0.978), "csiq": (0.968, 0.961), "kadid10k": (0.944, 0.941),
                 "livec": (0.916, 0.900), "bid": (0.887, 0.862), "koniq10k": (0.904, 0.898)}
PAPER_TABLE_3 = {("livec", "koniq10k"): 0.781, ("koniq10k", "livec"): 0.844, ("live", "csiq"): 0.783,
                 ("csiq", "live"): 0.935}
ABLATIONS = {  # Table 4: variant -> (config overrides, paper CSIQ (PLCC, SRCC), paper LIVEC (PLCC, SRCC))
    "MP-IQE": (None, (0.968, 0.961), (0.916, 0.900)),
    "w/o Scene prompts": ("use_scene_prompts=false", (0.965, 0.956), (0.913, 0.882)),
    "w/o Distortion prompts": ("use_distortion_prompts=false", (0.961, 0.953), (0.911, 0.884)),
    "w/o Deep visual prompts": ("visual_prompt_depth=0", (0.947, 0.932), (0.893, 0.874)),
    "Shallow visual prompts": ("visual_prompt_depth=1", (0.956, 0.947), (0.905, 0.888)),
}
PAPER_TABLE_5 = {0.2: {"live": (0.960, 0.956), "livec": (0.845, 0.808)},
                 0.4: {"live": (0.974, 0.972), "livec": (0.889, 0.856)},
                 0.6: {"live": (0.975, 0.973), "livec": (0.904, 0.880)}}
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
    parser.add_argument("--table", type=int, choices=[1, 3, 4, 5, 6], default=None,
                        help="Reproduce this table of the paper (default: the splits of the train.py command after --).")
    parser.add_argument("--output_dir", required=True, help="Runs go to OUTPUT_DIR/<run>/split_<k>.")
    parser.add_argument("--liqe_root", type=str, default=None, help="LIQE's IQA_Database folder (label files).")
    parser.add_argument("--data_root", type=str, default=None,
                        help="Folder holding each dataset's images in its LIQE folder name (default: --liqe_root).")
    parser.add_argument("--data_dir", action="append", default=[], metavar="DATASET=PATH",
                        help="Image folder of one dataset (repeatable).")
    parser.add_argument("--num_splits", type=int, default=10)
    parser.add_argument("--first_split", type=int, default=1)
    parser.add_argument("--launch_args", type=str, default="", help="Options for `accelerate launch`.")
    parser.add_argument("--evaluate_args", type=str, default="", help="Extra options for evaluate.py.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands without running them.")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then options for every train.py command.")
    args = parser.parse_args(argv)
    if args.train_args and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    if not 1 <= args.first_split <= args.first_split + args.num_splits - 1 <= 10:
        parser.error("splits must lie in 1..10.")
    if args.table is not None and args.liqe_root is None:
        parser.error(f"--table {args.table} needs --liqe_root (LIQE's IQA_Database folder with the label files).")
    for option in ("liqe_root", "data_root"):  # a dry run only prints the commands
        folder = getattr(args, option)
        if folder is not None and not args.dry_run and not Path(folder).is_dir():
            parser.error(f"--{option} {folder}: no such folder.")
    if any("=" not in item for item in args.data_dir):
        parser.error("--data_dir takes DATASET=PATH.")
    return args


class Runner:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.output_dir)
        self.splits = list(range(args.first_split, args.first_split + args.num_splits))
        self.data_dirs = dict(item.split("=", 1) for item in args.data_dir)

    def run(self, command):
        print("+", shlex.join(command), flush=True)
        if not self.args.dry_run:
            subprocess.run(command, check=True)

    def dataset_args(self, name):
        """train.py options for a dataset with LIQE's labels on the paper's split (the protocol of Tables 1-6)."""
        folder = get_dataset_spec(name).liqe_folder
        data_dir = self.data_dirs.get(name) or str(Path(self.args.data_root or self.args.liqe_root) / folder)
        return ["--dataset_name", name, "--data_dir", data_dir, "--label_file", str(Path(self.args.liqe_root) / folder),
                "--split_protocol", "paper"]

    def train(self, run, train_args):
        """Trains the splits of one experiment into OUTPUT_DIR/<run>/split_<k>; returns their folders."""
        folders = []
        for k in self.splits:
            split_dir = self.out / run / f"split_{k}"
            folders.append(split_dir)
            if (split_dir / "all_results.json").is_file():
                print(f"{run} split {k}: already trained in {split_dir}")
                continue
            # --quiet: the child's own one-line error is the message, without accelerate's traceback after it
            self.run([sys.executable, "-m", "accelerate.commands.launch", "--quiet", *shlex.split(self.args.launch_args),
                      str(HERE / "train.py"), *train_args, *self.args.train_args, "--split_index", str(k),
                      "--output_dir", str(split_dir)])
        return folders

    def evaluate(self, name, folders, *extra):
        """Scores `folders` with evaluate.py into OUTPUT_DIR/evaluation/<name>; returns its summary (None if dry)."""
        out = self.out / "evaluation" / name  # name "" for the splits of a plain train.py command
        self.run([sys.executable, str(HERE / "evaluate.py"), "--model_name_or_path", *map(str, folders),
                  "--output_dir", str(out), *extra, *shlex.split(self.args.evaluate_args)])
        return None if self.args.dry_run else json.loads((out / "results.json").read_text())

    def splits_median(self, run, train_args):
        return self.evaluate(run, self.train(run, train_args), "--protocol", "paper_splits")


def _cell(summary, key="median_srcc"):
    return "—" if summary is None else f"{summary[key]:.3f}"


def _pair(summary):
    return f"{_cell(summary, 'median_plcc')} | {_cell(summary)}"


def table_1(runner):
    rows = ["| dataset | PLCC (ours) | SRCC (ours) | PLCC (paper) | SRCC (paper) |", "|---|---|---|---|---|"]
    for name in DATASETS:
        summary = runner.splits_median(name, runner.dataset_args(name))
        plcc, srcc = PAPER_TABLE_1[name]
        rows.append(f"| {TITLES[name]} | {_pair(summary)} | {plcc:.3f} | {srcc:.3f} |")
    return "Table 1: median over splits of the paper's 80/20 protocol, LIQE's labels", rows


def table_3(runner):
    rows = ["| training | testing | SRCC (ours) | SRCC (paper) |", "|---|---|---|---|"]
    for (train, test), paper in PAPER_TABLE_3.items():
        folders = runner.train(train, runner.dataset_args(train))
        test_args = runner.dataset_args(test)[:6]  # the whole test dataset: no split
        summary = runner.evaluate(f"{train}_on_{test}", folders, "--protocol", "cross", *test_args)
        rows.append(f"| {TITLES[train]} | {TITLES[test]} | {_cell(summary)} | {paper:.3f} |")
    return "Table 3: cross-dataset SRCC, median over the models of the training dataset's splits", rows


def table_4(runner):
    rows = ["| variant | CSIQ PLCC | CSIQ SRCC | LIVEC PLCC | LIVEC SRCC | paper CSIQ | paper LIVEC |",
            "|---|---|---|---|---|---|---|"]
    for variant, (overrides, paper_csiq, paper_livec) in ABLATIONS.items():
        cells = []
        for name in ("csiq", "livec"):
            extra = ["--config_overrides", overrides] if overrides else []
            run = name if overrides is None else f"{name}_{overrides.replace('=', '_')}"
            cells.append(_pair(runner.splits_median(run, runner.dataset_args(name) + extra)))
        rows.append(f"| {variant} | {' | '.join(cells)} | {paper_csiq[0]:.3f} / {paper_csiq[1]:.3f} | "
                    f"{paper_livec[0]:.3f} / {paper_livec[1]:.3f} |")
    return "Table 4: ablations (PLCC / SRCC)", rows


def table_5(runner):
    rows = ["| training set | LIVE PLCC | LIVE SRCC | LIVEC PLCC | LIVEC SRCC | paper LIVE | paper LIVEC |",
            "|---|---|---|---|---|---|---|"]
    for fraction, paper in PAPER_TABLE_5.items():
        cells = [_pair(runner.splits_median(f"{name}_fraction_{fraction}",
                                            runner.dataset_args(name) + ["--train_fraction", str(fraction)]))
                 for name in ("live", "livec")]
        rows.append(f"| {fraction:.0%} | {' | '.join(cells)} | {paper['live'][0]:.3f} / {paper['live'][1]:.3f} | "
                    f"{paper['livec'][0]:.3f} / {paper['livec'][1]:.3f} |")
    return "Table 5: data efficiency (a fraction of the 80 % training part; PLCC / SRCC)", rows


def table_6(runner):
    rows = ["| prompt | length | LIVE PLCC | LIVE SRCC | CSIQ PLCC | CSIQ SRCC | paper LIVE | paper CSIQ |",
            "|---|---|---|---|---|---|---|---|"]
    for (prompt, length), paper in PAPER_TABLE_6.items():
        field = f"{prompt}_prompt_length={length}"
        cells = [_pair(runner.splits_median(f"{name}_{prompt}_prompt_{length}",
                                            runner.dataset_args(name) + ["--config_overrides", field]))
                 for name in ("live", "csiq")]
        rows.append(f"| {prompt} | {length} | {' | '.join(cells)} | {paper['live'][0]:.3f} / "
                    f"{paper['live'][1]:.3f} | {paper['csiq'][0]:.3f} / {paper['csiq'][1]:.3f} |")
    return "Table 6: prompt lengths (PLCC / SRCC)", rows


TABLES = {1: table_1, 3: table_3, 4: table_4, 5: table_5, 6: table_6}


def main(argv=None):
    args = parse_args(argv)
    runner = Runner(args)
    if args.table is None:
        summary = runner.splits_median("", [])
        if summary is not None:
            print(f"median of {summary['num_models']} splits: SRCC {summary['median_srcc']:.3f}, "
                  f"PLCC {summary['median_plcc']:.3f}")
        return summary
    title, rows = TABLES[args.table](runner)
    text = f"## {title}\n\n({len(runner.splits)} split(s): {runner.splits[0]}..{runner.splits[-1]})\n\n" + "\n".join(
        rows) + "\n"
    print(text)
    if not args.dry_run:
        path = runner.out / f"table_{args.table}.md"
        path.write_text(text)
        print(f"written to {path}")
    return text


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(f"run_protocol: a step failed with exit status {err.returncode} (its message is above): "
                 f"{shlex.join(err.cmd)}\nThe runs that finished are kept; the same command continues from them.")
