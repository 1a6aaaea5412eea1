"""The `mpiqe-score` command: arguments, the scoring loop, exit statuses."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .scoring import BACKENDS, DTYPES
from .writers import FORMATS, RESULT_COLUMNS


EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_PIPE_CLOSED = 141  # what a shell reports for a process that SIGPIPE ended

EXIT_STATUS_HELP = (
    "Exit status: 0 every input scored; 1 some inputs failed (their rows say why, status 'error') and the others "
    "are scored; 2 usage error (bad arguments, unavailable device, existing output without --resume/--overwrite, "
    "model or dataset that cannot be used); 130 interrupted by Ctrl-C, 143 by SIGTERM (the rows scored so far are "
    "kept: finish with --resume); 141 the reader of standard output closed it (as `| head` does)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpiqe-score",
        description="Score the quality of images with an MP-IQE model. Run it under `torchrun --nproc_per_node N -m "
        "mpiqe_hf.cli` or `accelerate launch -m mpiqe_hf.cli` to share the images between processes.",
        epilog=EXIT_STATUS_HELP,
    )
    _add_input_arguments(parser.add_argument_group("inputs"))
    _add_model_arguments(parser.add_argument_group("model"))
    _add_output_arguments(parser.add_argument_group("output"))
    return parser


def _add_input_arguments(inputs) -> None:
    inputs.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders, or glob patterns")
    inputs.add_argument(
        "--paths-from", metavar="FILE", help="a text file listing image paths, one per line (- = stdin)"
    )
    inputs.add_argument(
        "--dataset",
        metavar="NAME",
        help="a `datasets` dataset: Hub id, save_to_disk folder, or Parquet file(s) (a path or glob ending in "
        ".parquet)",
    )
    inputs.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    inputs.add_argument("--split", default=None, help="dataset split (default: the only one)")
    inputs.add_argument("--image-column", default="image", help="dataset column holding the images (default image)")
    inputs.add_argument(
        "--id-column", default=None, help="dataset column identifying a row in the output (default: the row index)"
    )
    inputs.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    inputs.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="look into sub-folders of folder arguments, and let ** in globs match folders (default: on)",
    )


def _add_model_arguments(model) -> None:
    model.add_argument("--model", "-m", required=True, help="Hub repo id or local folder of an MP-IQE checkpoint")
    model.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the model")
    model.add_argument("--backend", choices=BACKENDS, default="torch", help="runtime that scores (default torch)")
    model.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps")
    model.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto = bfloat16 on CUDA GPUs and on CPUs with AVX512-BF16 or AMX, else float32",
    )
    model.add_argument(
        "--compile",
        action="store_true",
        help="torch backend: score through torch.compile (one compile of a minute or more at the start; the last, "
        "smaller batch is padded so that it does not compile again)",
    )
    model.add_argument("--batch-size", "-b", type=int, default=16, help="images per forward pass (default 16)")
    model.add_argument("--num-crops", type=int, default=None, help="crops per image (default: the processor's)")
    model.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader processes decoding and cropping per scoring process (default: the CPUs per process - 1, "
        "1 to 8; 0 decodes in the scoring process)",
    )
    model.add_argument(
        "--allow-pickle", action="store_true", help="also load models whose weights are pickles (trusted sources only)"
    )


def _add_output_arguments(output) -> None:
    output.add_argument(
        "--output", "-o", default=None, help="write the rows to this file (CSV, JSONL or Parquet) instead of stdout"
    )
    output.add_argument(
        "--format",
        "-f",
        choices=(*FORMATS, "table"),
        default=None,
        help="output format (default: from the --output extension; table on stdout)",
    )
    output.add_argument(
        "--save-maps",
        metavar="DIR",
        default=None,
        help="also write each image's quality maps as PNG overlays with a colour bar into DIR "
        "(<name>.quality_map.png: Grad-CAM, <name>.distortion_map.png: distortion windows; torch backend; one more "
        "forward and backward pass per image)",
    )
    existing = output.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="keep the rows of an existing output, score the rest")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing output")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_crops is not None and args.num_crops < 1:
        parser.error("--num-crops must be at least 1")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error("--num-workers must be 0 or more")
    if args.dataset is not None and (args.paths or args.paths_from):
        parser.error("--dataset cannot be combined with paths or --paths-from")
    if args.dataset is None and not args.paths and args.paths_from is None:
        parser.error("give image paths, --paths-from FILE or --dataset NAME")
    if args.streaming and args.dataset is None:
        parser.error("--streaming needs --dataset")
    if args.streaming and args.id_column is None:
        parser.error("--streaming needs --id-column: row positions are not stable when workers share a stream")
    if args.output is not None and os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder")
    if args.output is None and (args.resume or args.overwrite):
        parser.error("--resume and --overwrite need --output")
    if args.output is not None and args.format == "table":
        parser.error("--format table is for the terminal; write CSV, JSONL or Parquet to --output")
    if args.output is None and args.format == "parquet":
        parser.error("--format parquet needs --output")
    if args.save_maps is not None and args.backend != "torch":
        parser.error("--save-maps needs --backend torch: the maps come from the model's gradients")
    if args.save_maps is not None and args.streaming:
        parser.error("--save-maps cannot be combined with --streaming")


def _is_main_process() -> bool:
    """Rank 0 under torchrun/accelerate launch (which set RANK), or a single process."""
    return os.environ.get("RANK", "0") == "0"


def _say(message: str) -> None:
    if _is_main_process():
        print(f"mpiqe-score: {message}", file=sys.stderr, flush=True)


class Terminated(Exception):
    """Raised in the main thread by SIGTERM, so that the writers are closed as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `mpiqe-score`; returns the exit status (see `EXIT_STATUS_HELP`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _Run(args).execute()
    except UsageError as err:
        _say(str(err))
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What to score: `sources[i]` keyed `keys[i]`, or the rows of a streamed dataset (`stream`)."""

    keys: Sequence[Any] = ()
    sources: Sequence[Any] = ()
    stream: Any = None
    problems: int = 0


class _MapWriter:
    """`--save-maps`: the quality-map overlays of each scored image (decoded again for the overlay)."""

    def __init__(self, folder: str, scorer, inputs: _Inputs, max_image_size: int | None):
        import torch

        self.folder = folder
        self.scorer = scorer
        self.max_image_size = max_image_size
        with torch.no_grad():  # not in inference mode: the maps take gradients through these
            self.text_features = scorer.model.get_text_features()
        self.sources = inputs.sources
        self.positions = {str(key): position for position, key in enumerate(inputs.keys)}

    def __call__(self, keys, pixel_values, rows) -> None:
        from ..image_utils_mpiqe import load_image
        from ..visualization import save_map_overlays

        for key, crops, row in zip(keys, pixel_values, rows):
            image = load_image(self.sources[self.positions[str(key)]])
            maps = self.scorer.model.quality_map(
                crops[None].to(self.scorer.device, self.scorer.dtype),
                [(image.height, image.width)],
                text_features=self.text_features,
                max_image_size=self.max_image_size,
            )
            distortion_map = maps.distortion_maps[0].float() if maps.distortion_maps is not None else None
            title = f"{row['score']:.3f} ({row['quality']})"
            save_map_overlays(self.folder, key, image, maps.gradcam_maps[0].float(), distortion_map, title=title)


class _Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args

    # -- set-up ----------------------------------------------------------------------------------------------------

    def _inputs(self) -> _Inputs:
        args = self.args
        if args.dataset is None:
            from .inputs import collect_files, read_path_list

            files, problems = collect_files(args.paths, recursive=args.recursive) if args.paths else ([], [])
            for argument, reason in problems:
                _say(f"{argument}: {reason}")
            if args.paths_from is not None:
                files = list(dict.fromkeys(files + read_path_list(args.paths_from)))  # each path once, in order
            if not files:
                raise UsageError("no image files to score")
            return _Inputs(keys=files, sources=files, problems=len(problems))

        from .inputs import ColumnView, load_input_dataset, prepare_dataset_columns

        dataset = load_input_dataset(args.dataset, args.dataset_config, args.split, args.streaming, args.revision)
        dataset = prepare_dataset_columns(dataset, args.dataset, args.image_column, args.id_column)
        if args.streaming:
            return _Inputs(stream=dataset)
        keys = dataset[args.id_column] if args.id_column else range(len(dataset))
        return _Inputs(keys=keys, sources=ColumnView(dataset, args.image_column))

    def _key_column(self) -> str:
        args = self.args
        return "path" if args.dataset is None else (args.id_column or "index")

    def _output(self, world_size: int):
        from .writers import ScoreOutput, format_from_extension

        args = self.args
        if args.output is None:
            if world_size > 1:
                raise UsageError("several processes write one file: pass --output")
            return None
        fmt = args.format or format_from_extension(args.output)
        output = ScoreOutput(args.output, fmt, [self._key_column(), *RESULT_COLUMNS])
        if output.has_results() and not (args.resume or args.overwrite):
            raise UsageError(
                f"{output.describe_existing()} already holds results; pass --resume to score only the images not in "
                "it, or --overwrite to replace it"
            )
        return output

    def _show_progress(self, state) -> bool:
        """Progress bars (ours and transformers' weight loading): `--progress`/`--no-progress`, else on a terminal."""
        shown = self.args.progress if self.args.progress is not None else sys.stderr.isatty()
        return shown and state.is_main_process

    def _default_workers(self, state) -> int:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        return min(8, max(1, cpus // processes_here - 1))

    # -- the run ---------------------------------------------------------------------------------------------------

    def _runtime(self):
        """`(device, dtype, why that dtype, PartialState)` of this process."""
        from accelerate import PartialState

        from .scoring import resolve_device, resolve_dtype

        args = self.args
        # onnxruntime runs on the CPU here: `auto` means the CPU for it
        device = resolve_device("cpu" if args.backend == "onnx" and args.device == "auto" else args.device)
        dtype, dtype_reason = resolve_dtype(args.dtype, device)
        state = PartialState(cpu=device.type == "cpu")
        if state.num_processes > 1 and device.type == "cuda":
            if device.index is not None:
                raise UsageError(
                    f"--device {args.device}: with several processes each one takes its own GPU; pass --device cuda"
                )
            device = state.device
        return device, dtype, dtype_reason, state

    def _scored_before(self, output, state):
        """What an earlier run left in the output (nothing with --overwrite, which removes it), read once its parts
        are folded in."""
        from .writers import ScoredSoFar

        if output is not None and state.is_main_process:
            if self.args.overwrite:
                output.remove()
            else:
                output.recover()
        state.wait_for_everyone()
        return output.scored_so_far() if output is not None else ScoredSoFar(set(), 0)

    def execute(self) -> int:
        from .. import MPIQEImageProcessor
        from ..model_sources import ModelSourceUnavailable, check_model_source
        from .scoring import build_scorer, load_processor

        args = self.args
        device, dtype, dtype_reason, state = self._runtime()
        try:  # in seconds, not after a download's retries
            check_model_source(args.model, "the model", revision=args.revision)
        except ModelSourceUnavailable as err:
            raise UsageError(str(err)) from None
        output = self._output(state.num_processes)
        inputs = self._inputs()

        from transformers.utils import logging as transformers_logging

        bars_were_on = transformers_logging.is_progress_bar_enabled()
        if not self._show_progress(state):
            transformers_logging.disable_progress_bar()  # the weight-loading bar too
        try:
            with state.main_process_first():  # one download from the Hub, then the others read the cache
                scorer = build_scorer(
                    args.backend, args.model, args.revision, args.allow_pickle, device, dtype, compile=args.compile
                )
                processor = load_processor(args.model, args.revision)
        finally:
            if bars_were_on:
                transformers_logging.enable_progress_bar()
        if processor is None:
            processor = MPIQEImageProcessor.default_for(scorer.config)
            size = processor.crop_size["height"]
            _say(
                f"{args.model} has no preprocessor_config.json; using the default image processor ({size} x {size} "
                "crops)"
            )

        before = self._scored_before(output, state)
        num_workers = self._default_workers(state) if args.num_workers is None else args.num_workers
        loader, total = self._loader(inputs, before.keys, processor, state, num_workers, device)
        runtime = f"{device} in {str(dtype).replace('torch.', '')} ({dtype_reason})"
        if args.backend == "onnx":
            runtime = "the CPU with onnxruntime"
        _say(
            f"scoring on {runtime}, "
            f"{state.num_processes} process(es), {num_workers} loader worker(s) each"
            + (f"; {len(before.keys)} input(s) already in {args.output}" if before.keys else "")
        )

        writer = self._writer(output, state, scorer.config)
        map_writer = None
        if args.save_maps is not None:
            map_writer = _MapWriter(args.save_maps, scorer, inputs, processor.max_image_size)
        counts = {"scored": 0, "failed": 0}
        status = EXIT_OK
        try:
            self._score(loader, scorer, writer, total, state, counts, map_writer)
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
        except Terminated:
            status = EXIT_TERMINATED
        except BrokenPipeError:
            # The reader has what it wanted (`| head`): stop quietly; what is still buffered goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PIPE_CLOSED
        finally:
            writer.close()
            if output is not None and state.num_processes == 1:
                output.fold_parts()
        return self._finish(status, output, state, counts, before, inputs)

    def _finish(self, status, output, state, counts, before, inputs) -> int:
        """Folds the part files, says what was scored (or where an interrupted run left its rows); the exit status."""
        from accelerate.utils import gather_object

        args = self.args
        if status != EXIT_OK:
            message = f"interrupted after {counts['scored'] + counts['failed']} new row(s)"
            if output is not None:
                where = args.output if state.num_processes == 1 else f"{args.output} and its part files"
                message += f"; they are in {where}; run the same command with --resume to finish"
            print(f"mpiqe-score: {message}", file=sys.stderr, flush=True)
            return status

        totals = gather_object([counts]) if state.num_processes > 1 else [counts]
        if output is not None:
            state.wait_for_everyone()
            if state.is_main_process:
                output.fold_parts()
        scored = sum(item["scored"] for item in totals)
        failed = sum(item["failed"] for item in totals) + before.errors + inputs.problems
        if state.num_processes > 1:
            state.wait_for_everyone()
            state.destroy_process_group()
        summary = f"{scored} scored, {sum(item['failed'] for item in totals)} failed"
        if before.keys:
            summary += f"; {len(before.keys)} kept from before ({before.errors} failed)"
        _say(summary + (f"; rows in {args.output}" if output is not None else ""))
        if failed:
            _say(f"{failed} input(s) could not be scored (rows with status 'error', or arguments named above)")
            # The main process carries the status: a launcher stops the other processes when one exits non-zero.
            return EXIT_SOME_FAILED if state.is_main_process else EXIT_OK
        return EXIT_OK

    def _loader(self, inputs: _Inputs, done: set[str], processor, state, num_workers: int, device):
        import torch

        from .inputs import IndexedImages, StreamedImages, collate

        args = self.args
        if inputs.stream is not None:
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(inputs.stream, rank=state.process_index, world_size=state.num_processes)
            dataset = StreamedImages(stream, args.image_column, args.id_column, done, processor, args.num_crops)
            total = None
        else:
            remaining = [index for index, key in enumerate(inputs.keys) if str(key) not in done]
            with state.split_between_processes(remaining) as mine:
                positions = mine
            dataset = IndexedImages(inputs.sources, inputs.keys, positions, processor, args.num_crops)
            total = len(positions)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
        )
        return loader, total

    def _writer(self, output, state, config):
        from .writers import CSVWriter, JSONLWriter, TableWriter

        args = self.args
        if output is None:
            columns = [self._key_column(), *RESULT_COLUMNS]
            fmt = args.format or "table"
            if fmt == "csv":
                return CSVWriter(sys.stdout, columns, header=True)
            if fmt == "jsonl":
                return JSONLWriter(sys.stdout, columns)
            widths = {
                "quality": max(len("quality"), *(len(name) for name in config.quality_levels)),
                "scene": max([len("scene"), *(len(name) for name in config.scene_classes)]),
                "distortion": max([len("distortion"), *(len(name) for name in config.distortion_classes)]),
            }
            return TableWriter(sys.stdout, columns, widths)
        if state.num_processes == 1 and output.format in ("csv", "jsonl"):
            return output.open_for_append()
        return output.open_part(state.process_index)

    def _score(self, loader, scorer, writer, total, state, counts, map_writer=None) -> None:
        import torch
        from tqdm.auto import tqdm

        args = self.args
        config = scorer.config
        key_column = self._key_column()
        show = self._show_progress(state)
        pending_keys: list[Any] = []
        pending_pixels: list[torch.Tensor] = []

        def error_row(key, message):
            return {key_column: key, **dict.fromkeys(RESULT_COLUMNS[:-2]), "status": "error", "error": message}

        def score_pending(count: int) -> list[dict]:
            keys = pending_keys[:count]
            pixel_values = torch.cat(pending_pixels) if len(pending_pixels) > 1 else pending_pixels[0]
            batch, rest = pixel_values[:count], pixel_values[count:]
            del pending_keys[:count]
            pending_pixels[:] = [rest] if len(rest) else []
            results = scorer.score_batch(batch).results(config)
            rows = [{key_column: key, **result, "status": "ok", "error": None} for key, result in zip(keys, results)]
            if map_writer is not None:
                map_writer(keys, batch, rows)
            return rows

        with tqdm(total=total, unit="img", desc="mpiqe-score", disable=not show, file=sys.stderr) as bar:
            for loaded in loader:
                if loaded.failures:
                    writer.write([error_row(key, message) for key, message in loaded.failures])
                    counts["failed"] += len(loaded.failures)
                    bar.update(len(loaded.failures))
                if loaded.pixel_values is not None:
                    pending_keys.extend(loaded.keys)
                    pending_pixels.append(loaded.pixel_values)
                while len(pending_keys) >= args.batch_size:
                    rows = score_pending(args.batch_size)
                    writer.write(rows)
                    counts["scored"] += len(rows)
                    bar.update(len(rows))
            if pending_keys:
                rows = score_pending(len(pending_keys))
                writer.write(rows)
                counts["scored"] += len(rows)
                bar.update(len(rows))
