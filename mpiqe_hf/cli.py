"""`mpiqe-score`: score image files, folders or globs with an MP-IQE model, from the command line.

    mpiqe-score photos/ extra.jpg "shots/**/*.png" --model org/mp-iqe-koniq --format csv --output scores.csv

Every input file is decoded once; a file that cannot be read is reported on stderr (with its path and the reason)
and skipped, every other file is still scored, and the exit status is then 1. The results are written only when
everything has been scored: to `--output` through a temporary file that is renamed into place, or to stdout in one
go. Exit status: 0 all scored, 1 some files failed, 2 bad usage or a model that cannot be loaded, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
import tempfile

__all__ = ["main", "build_parser", "collect_files", "FIELDS"]

#: Columns of the output, in order.
FIELDS = ("path", "score", "quality", "scene", "distortion", "normalized_score")

_GLOB_CHARS = set("*?[")


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpiqe-score",
        description="Score the quality of images with an MP-IQE model.",
        epilog="Exit status: 0 all scored, 1 some files could not be read (the others are scored), 2 usage error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or glob patterns")
    parser.add_argument("--model", "-m", required=True, help="Hub repo id or local folder of an MP-IQE checkpoint")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the model")
    parser.add_argument("--batch-size", "-b", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default cpu)")
    parser.add_argument("--num-crops", type=int, default=None, help="crops per image (default: the processor's)")
    parser.add_argument(
        "--format", "-f", choices=("table", "csv", "jsonl"), default="table", help="output format (default table)"
    )
    parser.add_argument("--output", "-o", default=None, help="write the results to this file instead of stdout")
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="look into sub-folders of folder arguments, and let ** in globs match folders (default: on)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="also load models whose weights are pickles (trusted sources only)"
    )
    return parser


def collect_files(paths: list[str], recursive: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """
    Expands the arguments into image files, in a stable order and without duplicates.

    A file argument is taken whatever its name; in folders, files with an image extension Pillow knows are taken
    (hidden files and folders are skipped); an argument that does not exist but holds `*`, `?` or `[` is a glob.
    Returns `(files, problems)`, `problems` holding `(argument, reason)` for arguments that match nothing.
    """
    extensions = _image_extensions()
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    def add_folder(folder: str) -> int:
        found = []
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            for name in names:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                    found.append(os.path.join(root, name))
        for path in sorted(found):
            add(path)
        return len(found)

    for argument in paths:
        if os.path.isdir(argument):
            if add_folder(argument) == 0:
                problems.append((argument, "no image files in this folder"))
        elif os.path.exists(argument):
            add(argument)
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=recursive))
            count = 0
            for match in matches:
                if os.path.isdir(match):
                    count += add_folder(match)
                elif os.path.isfile(match):
                    add(match)
                    count += 1
            if count == 0:
                problems.append((argument, "the pattern matches no files"))
        else:
            problems.append((argument, "no such file or folder"))
    return files, problems


def _format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    cells = [list(FIELDS)]
    for row in rows:
        cells.append(
            [
                row["path"],
                f"{row['score']:.4f}",
                row["quality"],
                row["scene"] or "-",
                row["distortion"] or "-",
                f"{row['normalized_score']:.4f}",
            ]
        )
    widths = [max(len(line[index]) for line in cells) for index in range(len(FIELDS))]
    numeric = {1, 5}
    lines = []
    for line in cells:
        parts = [
            cell.rjust(widths[index]) if index in numeric else cell.ljust(widths[index])
            for index, cell in enumerate(line)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".mpiqe-score-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _load_scorer(args):
    """The model, its image processor and the pipeline around them."""
    import torch
    from transformers import pipeline

    from . import PIPELINE_TASK
    from .image_processing_mpiqe import MPIQEImageProcessor
    from .modeling_mpiqe import MPIQEModel

    device = torch.device(args.device)
    model = MPIQEModel.from_pretrained(args.model, revision=args.revision, allow_pickle=args.allow_pickle)
    try:
        processor = MPIQEImageProcessor.from_pretrained(args.model, revision=args.revision)
    except OSError:
        processor = MPIQEImageProcessor(crop_size=model.config.clip_config.vision_config.image_size)
        print(
            f"mpiqe-score: {args.model} has no preprocessor_config.json; using the default image processor "
            f"(crop size {dict(processor.crop_size)}).",
            file=sys.stderr,
        )
    model.to(device).eval()
    return pipeline(PIPELINE_TASK, model=model, image_processor=processor, device=device)


def main(argv: list[str] | None = None) -> int:
    """Runs `mpiqe-score`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_crops is not None and args.num_crops < 1:
        parser.error("--num-crops must be at least 1")
    if args.output is not None and os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder")

    files, problems = collect_files(args.paths, recursive=args.recursive)
    for argument, reason in problems:
        print(f"mpiqe-score: {argument}: {reason}", file=sys.stderr)
    if not files:
        print("mpiqe-score: no image files to score", file=sys.stderr)
        return 2

    try:
        scorer = _load_scorer(args)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"mpiqe-score: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return 2

    from tqdm.auto import tqdm

    from .image_utils_mpiqe import load_image

    failed = len(problems)
    rows: list[dict] = []
    call_kwargs = {"return_normalized_score": True}
    if args.num_crops is not None:
        call_kwargs["num_crops"] = args.num_crops
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        with tqdm(total=len(files), unit="img", desc="mpiqe-score", disable=not show, file=sys.stderr) as bar:
            for start in range(0, len(files), args.batch_size):
                batch_paths, images = [], []
                for path in files[start : start + args.batch_size]:
                    try:
                        images.append(load_image(path))
                        batch_paths.append(path)
                    except ValueError as err:
                        failed += 1
                        tqdm.write(f"mpiqe-score: {path}: {err}", file=sys.stderr)
                if images:
                    results = scorer(images, batch_size=len(images), **call_kwargs)
                    for path, result in zip(batch_paths, results):
                        rows.append({"path": path, **{key: result.get(key) for key in FIELDS[1:]}})
                bar.update(len(files[start : start + args.batch_size]))
    except KeyboardInterrupt:
        print("mpiqe-score: interrupted; nothing was written", file=sys.stderr)
        return 130

    text = _format_rows(rows, args.format)
    if args.output is not None:
        _write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if failed:
        print(f"mpiqe-score: {failed} input(s) could not be scored; {len(rows)} scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
