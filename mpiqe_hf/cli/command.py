"""The `mpiqe-score` command: arguments, the scoring loop, exit statuses."""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from PIL import Image

from .errors import UsageError
from .scoring import BACKENDS, DTYPES
from .writers import FORMATS, RESULT_COLUMNS


EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_PIPE_CLOSED = 141  # what a shell reports for a process that SIGPIPE ended
EXIT_BUG = 70  # EX_SOFTWARE of sysexits.h

EXIT_STATUS_HELP = (
    "Exit status: 0 every input scored; 1 some inputs failed (their rows say why, status 'error') and the others "
    "are scored; 2 usage error (bad arguments, unavailable device, existing output without --resume/--overwrite, "
    "an output that is not mpiqe-score's own or was scored with other settings, an output another run is writing, "
    "an output, standard output or --save-maps folder that cannot be written, model or dataset that cannot be "
    "used); 130 interrupted by Ctrl-C, 143 by SIGTERM (the rows scored so far are kept: finish with --resume); 141 "
    "the reader of standard output closed it (as `| head` does); 70 a bug in mpiqe-score (a traceback, and where to "
    "report it)."
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
        "--paths-from",
        metavar="FILE",
        help="a text file listing image paths, one per line (- = stdin; blank lines and lines starting with # are "
        "skipped)",
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
        "--output",
        "-o",
        default=None,
        help="write the rows to this file (CSV, JSONL or Parquet) instead of stdout (- = stdout)",
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
    if args.output == "-":  # standard output, as `--paths-from -` is standard input (not a file named `-`)
        args.output = None
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
    if args.output is not None and (os.path.isdir(args.output) or args.output.endswith(os.sep)):
        example = os.path.join(args.output, "scores.csv")
        parser.error(f"--output {args.output} is a folder: give a file name such as {example}")
    if args.output is None and (args.resume or args.overwrite):
        parser.error("--resume and --overwrite need --output FILE (standard output cannot be resumed)")
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
        with warnings.catch_warnings():
            # Pillow still decodes images up to twice its pixel limit, warning on each: the row is the answer.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _Run(args).execute()
    except UsageError as err:
        _say(str(err))
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the scoring loop, which says how many rows it kept
        _say("interrupted before any row was written")
        return EXIT_INTERRUPTED
    except Terminated:
        _say("terminated before any row was written")
        return EXIT_TERMINATED
    except Exception:
        traceback.print_exc()
        _say(
            "this is a bug in mpiqe-score, not a problem with your inputs: please report it to the mpiqe_hf "
            "maintainers with the command line and the traceback above"
        )
        return EXIT_BUG
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What to score: `sources[i]` keyed `keys[i]`, or the rows of a streamed dataset (`stream`); `protected` holds
    the real paths of the files read, which nothing of this run may write to."""

    keys: Sequence[Any] = ()
    sources: Sequence[Any] = ()
    stream: Any = None
    problems: int = 0
    protected: set[str] = field(default_factory=set)


class _MapWriter:
    """`--save-maps`: the quality-map overlays of each scored image, at the paths of [`map_paths`]. The image is
    decoded again and cut into a grid that covers all of it ([`covering_num_crops`]): the score's own crops may leave
    most of a large photo out, and a map must show the whole image."""

    def __init__(self, paths: dict[str, tuple[str, str]], scorer, inputs: _Inputs, processor):
        import torch

        self.paths = paths
        self.scorer = scorer
        self.processor = processor
        with torch.no_grad():  # not in inference mode: the maps take gradients through these
            self.text_features = scorer.model.get_text_features()
        self.sources = inputs.sources
        self.positions = {str(key): position for position, key in enumerate(inputs.keys)}

    def __call__(self, keys, rows) -> None:
        from ..image_processing_mpiqe import covering_num_crops
        from ..image_utils_mpiqe import load_image
        from ..visualization import render_overlay

        crop = self.processor.crop_size
        for key, row in zip(keys, rows):
            image = load_image(self.sources[self.positions[str(key)]])
            num_crops = covering_num_crops(
                image.height, image.width, crop["height"], crop["width"], self.processor.max_image_size
            )
            crops = self.processor(image, num_crops=num_crops, crop_mode="grid", return_tensors="pt")["pixel_values"]
            maps = self.scorer.model.quality_map(
                crops.to(self.scorer.device, self.scorer.dtype),
                [(image.height, image.width)],
                text_features=self.text_features,
                max_image_size=self.processor.max_image_size,
            )
            title = f"{row['score']:.3f} ({row['quality']})"
            quality_path, distortion_path = self.paths[str(key)]
            os.makedirs(os.path.dirname(quality_path), exist_ok=True)
            coverage = maps.coverage[0]
            render_overlay(image, maps.gradcam_maps[0].float(), title=title, coverage=coverage).save(quality_path)
            if maps.distortion_maps is not None:
                overlay = render_overlay(
                    image, maps.distortion_maps[0].float(), title=title, label="distortion windows", coverage=coverage
                )
                overlay.save(distortion_path)


def map_paths(folder: str, keys: Sequence[Any], from_files: bool) -> dict[str, tuple[str, str]]:
    """
    `str(key) -> (quality map, distortion map)` paths in `folder`. An image file's maps keep its path below the
    folder the inputs share and its extension (`a/x.jpg` -> `a/x.jpg.quality_map.png`), so that neither `x.jpg`
    and `x.png` nor two sub-folders' `x.jpg` share a name; a dataset id is percent-encoded into one file name.
    """
    from urllib.parse import quote

    if from_files:
        root = os.path.commonpath([os.path.dirname(key) for key in keys])
        names = {key: os.path.relpath(key, root) for key in keys}
    else:
        names = {str(key): quote(str(key), safe="") for key in keys}
    return {
        key: (os.path.join(folder, f"{name}.quality_map.png"), os.path.join(folder, f"{name}.distortion_map.png"))
        for key, name in names.items()
    }


def _check_unique_ids(keys: Sequence[Any], column: str, dataset: str) -> None:
    # A null id would key its row as '' in CSV and null in JSONL, which --resume cannot match back to the row.
    nulls = [row for row, key in enumerate(keys) if key is None]
    if nulls:
        more = f" and {len(nulls) - 5} more" if len(nulls) > 5 else ""
        raise UsageError(
            f"--id-column {column}: row(s) {', '.join(map(str, nulls[:5]))}{more} of {dataset} have no id (null); "
            "fill them in, or leave out --id-column to key rows on the row number"
        )
    rows: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        rows.setdefault(str(key), []).append(row)
    repeated = [(key, where) for key, where in rows.items() if len(where) > 1]
    if repeated:
        key, where = repeated[0]
        more = f"; {len(repeated) - 1} other id(s) repeat too" if len(repeated) > 1 else ""
        raise UsageError(
            f"--id-column {column}: the id {key!r} is on rows {', '.join(map(str, where[:5]))} of {dataset}{more}; "
            "each id keys one output row, so they must be unique: choose another --id-column, or leave it out to "
            "key rows on the row number"
        )


def _dataset_files(name: str) -> set[str]:
    """The real paths of the local files a `--dataset` reads (none for a Hub id)."""
    if os.path.isdir(name):
        return {os.path.realpath(os.path.join(root, file)) for root, _, files in os.walk(name) for file in files}
    if name.endswith(".parquet"):
        return {os.path.realpath(path) for path in glob.glob(name)}
    return set()


def _drop_stdout() -> None:
    """Points standard output at /dev/null: what is still buffered for it cannot be written, and the flush at exit
    would otherwise fail again with a second message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _on_main(state, check) -> None:
    """Runs `check` in the main process only; a `UsageError` it raises is raised in every process."""
    message = None
    if state.is_main_process:
        try:
            check()
        except UsageError as err:
            message = str(err)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    if message is not None:
        raise UsageError(message)


class _Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lock = None  # the output's lock, held by the main process while it runs
        self.record = None  # the sidecar of an existing output

    # -- set-up ----------------------------------------------------------------------------------------------------

    def _inputs(self, state) -> _Inputs:
        args = self.args
        if args.dataset is None:
            from .inputs import collect_files, read_path_list

            files, problems = collect_files(args.paths, recursive=args.recursive) if args.paths else ([], [])
            if args.paths_from is not None:
                files = files + read_path_list(args.paths_from)
            # Rows are keyed on absolute paths, so that `imgs/`, `./imgs/` and `/abs/imgs` resume each other.
            files = list(dict.fromkeys(os.path.abspath(path) for path in files))
            named = [f"{argument}: {reason}" for argument, reason in problems]
            if not files:
                raise UsageError("; ".join([*named, "no image files to score: give image files, folders or globs"]))
            for line in named:
                _say(line)
            protected = {os.path.realpath(path) for path in files}
            if args.paths_from not in (None, "-"):
                protected.add(os.path.realpath(args.paths_from))
            return _Inputs(keys=files, sources=files, problems=len(problems), protected=protected)

        self._check_dataset_misses_output()
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        from .inputs import ColumnView, load_input_dataset, prepare_dataset_columns

        bars_were_on = not are_progress_bars_disabled()
        if not self._show_progress(state):
            disable_progress_bars()  # "Generating train split" and the downloads
        try:
            dataset = load_input_dataset(args.dataset, args.dataset_config, args.split, args.streaming, args.revision)
        finally:
            if bars_were_on:
                enable_progress_bars()
        dataset = prepare_dataset_columns(dataset, args.dataset, args.image_column, args.id_column)
        protected = _dataset_files(args.dataset)
        if args.streaming:
            return _Inputs(stream=dataset, protected=protected)
        keys = dataset[args.id_column] if args.id_column else range(len(dataset))
        if args.id_column:
            _check_unique_ids(keys, args.id_column, args.dataset)
        return _Inputs(keys=keys, sources=ColumnView(dataset, args.image_column), protected=protected)

    def _check_dataset_misses_output(self) -> None:
        """
        A `--dataset` Parquet glob must not take in the `--output`: a `--resume` would load the scores as data (its
        sidecar, lock and part files do not end in .parquet, so no such glob matches them). Refused already when the
        output does not exist yet but the pattern would match it, so that the first run does not set that trap.
        """
        args = self.args
        if args.output is None or not args.dataset.endswith(".parquet") or not set("*?[") & set(args.dataset):
            return
        matched = os.path.realpath(args.output) in _dataset_files(args.dataset)
        # PurePath.match, as glob.glob without recursive=True, lets `*` (and `**`) match within one folder level
        if matched or PurePath(os.path.abspath(args.output)).match(os.path.abspath(args.dataset)):
            raise UsageError(
                f"--dataset {args.dataset} matches --output {args.output}: the scores would be read as data by a "
                "later run (--resume); narrow the pattern, or write the output elsewhere"
            )

    def _key_column(self) -> str:
        args = self.args
        return "path" if args.dataset is None else (args.id_column or "index")

    def _settings(self, output, dtype, processor=None, scorer=None) -> dict:
        """What the output's sidecar records and `--resume` compares: the model and every setting that changes a
        score (the processor's and the model's only once they are loaded)."""
        args = self.args
        settings = {
            "model": os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
            "revision": args.revision,
            "backend": args.backend,
            # the exported graph computes in float32 whatever --dtype says
            "dtype": "float32" if args.backend != "torch" else str(dtype).replace("torch.", ""),
            "format": output.format,
            "key_column": self._key_column(),
        }
        if processor is not None:
            settings["num_crops"] = args.num_crops or processor.num_crops
            settings["processor"] = processor.to_dict()
            settings["weights_sha256"] = scorer.weights_sha256
        return json.loads(json.dumps(settings, default=str))  # as the sidecar gives it back: lists, not tuples

    def _output(self, state, inputs: _Inputs, dtype):
        """The `--output`, checked before the model loads: its folder, that it is no input, that it is this tool's
        own, that no other run writes it (the main process takes its lock), and the settings known so far."""
        from .writers import ScoreOutput, format_from_extension

        args = self.args
        if args.output is None:
            if state.num_processes > 1:
                raise UsageError("several processes write one file: pass --output")
            return None
        fmt = args.format or format_from_extension(args.output)
        output = ScoreOutput(args.output, fmt, [self._key_column(), *RESULT_COLUMNS])
        output.check_folder()
        for path in (output.path, output.sidecar_path, output.lock_path):
            if os.path.realpath(path) in inputs.protected:
                raise UsageError(
                    f"--output {args.output}: {path} is one of the inputs ({os.path.realpath(path)}); it is left "
                    "untouched: choose another --output"
                )

        def claim() -> None:
            self.lock = output.lock()
            self.record = output.check_ownership()
            if output.has_results() and not (args.resume or args.overwrite):
                raise UsageError(
                    f"{output.describe_existing()} already holds results; pass --resume to score only the images not "
                    "in it, or --overwrite to replace it"
                )
            if args.resume and self.record is not None and output.has_results():
                output.check_settings(self.record, self._settings(output, dtype))

        _on_main(state, claim)
        return output

    def _check_map_folder(self, inputs: _Inputs, output) -> dict[str, tuple[str, str]] | None:
        """`--save-maps`: the folder can take files (made if missing) and no map would replace an input."""
        from .writers import check_writable_folder

        args = self.args
        if args.save_maps is None:
            return None
        maps_folder = os.path.realpath(args.save_maps)
        for folder in (path for path in args.paths if os.path.isdir(path)):
            if os.path.commonpath([maps_folder, os.path.realpath(folder)]) == os.path.realpath(folder):
                raise UsageError(
                    f"--save-maps {args.save_maps} is inside the input folder {folder}: a later run over {folder} "
                    "would score the maps as photos; choose a folder outside it"
                )
        paths = map_paths(args.save_maps, inputs.keys, from_files=args.dataset is None)
        taken = inputs.protected | ({os.path.realpath(output.path)} if output is not None else set())
        for key, pair in paths.items():
            for path in pair:
                if os.path.realpath(path) in taken:
                    raise UsageError(
                        f"--save-maps {args.save_maps}: the map of {key} would replace {path}, which this run reads "
                        "or writes; choose another --save-maps folder"
                    )
        check_writable_folder(os.path.abspath(args.save_maps), f"--save-maps {args.save_maps}", create=True)
        return paths

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
        device = resolve_device("cpu" if args.backend != "torch" and args.device == "auto" else args.device)
        dtype, dtype_reason = resolve_dtype(args.dtype, device)
        state = PartialState(cpu=device.type == "cpu")
        if state.num_processes > 1 and device.type == "cuda":
            if device.index is not None:
                raise UsageError(
                    f"--device {args.device}: with several processes each one takes its own GPU; pass --device cuda"
                )
            device = state.device
        return device, dtype, dtype_reason, state

    def _scored_before(self, output, state, settings):
        """What an earlier run left in the output (nothing with --overwrite, which removes it), read once its parts
        are folded in; the sidecar is written before any row."""
        from .writers import ScoredSoFar

        if output is None:
            return ScoredSoFar(set(), 0)
        args = self.args

        def prepare() -> None:
            if args.resume and self.record is not None and output.has_results():
                output.check_settings(self.record, settings)
            if args.overwrite:
                output.remove()
            else:
                output.recover()
            output.write_sidecar(settings)

        _on_main(state, prepare)
        return output.scored_so_far()

    def execute(self) -> int:
        try:
            return self._execute()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self) -> int:
        from .. import MPIQEImageProcessor
        from ..model_sources import ModelSourceUnavailable, check_model_source
        from .scoring import build_scorer, load_processor

        args = self.args
        device, dtype, dtype_reason, state = self._runtime()
        try:  # in seconds, not after a download's retries
            check_model_source(args.model, "the model", revision=args.revision)
        except ModelSourceUnavailable as err:
            raise UsageError(str(err)) from None
        inputs = self._inputs(state)
        output = self._output(state, inputs, dtype)
        maps = self._check_map_folder(inputs, output)

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

        settings = self._settings(output, dtype, processor, scorer) if output is not None else None
        before = self._scored_before(output, state, settings)
        num_workers = self._default_workers(state) if args.num_workers is None else args.num_workers
        loader, total = self._loader(inputs, before.keys, processor, state, num_workers, device)
        try:  # before the announcement: a standard output that takes nothing (a full disk) is then the one line
            writer = self._writer(output, state, scorer.config)
        except BrokenPipeError:
            _drop_stdout()
            return EXIT_PIPE_CLOSED
        except OSError as err:
            raise self._write_failure(err, 0) from None
        runtime = f"{device} in {str(dtype).replace('torch.', '')} ({dtype_reason})"
        if args.backend != "torch":
            runtime = f"the CPU with onnxruntime ({'int8' if args.backend == 'onnx-int8' else 'float32'} graph)"
        _say(
            f"scoring on {runtime}, "
            f"{state.num_processes} process(es), {num_workers} loader worker(s) each"
            + (f"; {len(before.keys)} input(s) already in {args.output}" if before.keys else "")
        )

        map_writer = None
        if maps is not None:
            map_writer = _MapWriter(maps, scorer, inputs, processor)
        counts = {"scored": 0, "failed": 0}
        status = EXIT_OK
        failure = None
        try:
            self._score(loader, scorer, writer, total, state, counts, map_writer)
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
        except Terminated:
            status = EXIT_TERMINATED
        except BrokenPipeError:
            # The reader has what it wanted (`| head`): stop quietly.
            _drop_stdout()
            return EXIT_PIPE_CLOSED
        except OSError as err:  # a full disk, a folder made read-only or removed during the run
            failure = err
        finally:
            try:
                writer.close()
                if output is not None and state.num_processes == 1:
                    output.fold_parts()
            except OSError as err:
                failure = failure or err
        if failure is not None:
            raise self._write_failure(failure, counts["scored"] + counts["failed"]) from None
        return self._finish(status, output, state, counts, before, inputs)

    def _write_failure(self, err: OSError, rows: int) -> UsageError:
        """The one line for a write that failed (a full disk, a folder made read-only or removed during the run)."""
        reason = (err.strerror or str(err)) + (f" ({err.filename})" if err.filename else "")
        if self.args.output is None:
            _drop_stdout()
            return UsageError(
                f"cannot write to standard output: {reason} after {rows} row(s); make room where it is redirected, "
                "or pass --output FILE (which --resume can finish)"
            )
        return UsageError(
            f"cannot write {self.args.output}: {reason} after {rows} new row(s); the rows written are kept: fix that "
            "and run the same command with --resume"
        )

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
                map_writer(keys, rows)
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
