#!/usr/bin/env python
"""Run the paper's protocol with one command: train on splits 1..N (each with `accelerate launch examples/train.py
... --split_index k --output_dir OUT/split_k`), then report the median SRCC/PLCC with `examples/evaluate.py`.

    python examples/run_protocol.py --output_dir runs/csiq --num_splits 10 \
        --launch_args "--num_processes 2" -- --dataset_name csiq --data_dir /data/CSIQ --label_file .../CSIQ

Everything after `--` goes to train.py unchanged. Finished splits (with all_results.json) are not retrained.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Each split trains into OUTPUT_DIR/split_<k>.")
    parser.add_argument("--num_splits", type=int, default=10)
    parser.add_argument("--first_split", type=int, default=1)
    parser.add_argument("--launch_args", type=str, default="", help="Options for `accelerate launch`.")
    parser.add_argument("--evaluate_args", type=str, default="", help="Extra options for evaluate.py.")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the options of train.py.")
    args = parser.parse_args(argv)
    if args.train_args and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    if not 1 <= args.first_split <= args.first_split + args.num_splits - 1 <= 10:
        parser.error("splits must lie in 1..10.")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output_dir)
    for k in range(args.first_split, args.first_split + args.num_splits):
        split_dir = out / f"split_{k}"
        if (split_dir / "all_results.json").is_file():
            print(f"split {k}: already trained in {split_dir}")
            continue
        command = [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(args.launch_args),
                   str(HERE / "train.py"), *args.train_args, "--split_index", str(k), "--output_dir", str(split_dir)]
        print("+", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    command = [sys.executable, str(HERE / "evaluate.py"), "--protocol", "paper_splits", "--model_name_or_path",
               *(str(out / f"split_{k}") for k in range(args.first_split, args.first_split + args.num_splits)),
               "--output_dir", str(out / "evaluation"), *shlex.split(args.evaluate_args)]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
