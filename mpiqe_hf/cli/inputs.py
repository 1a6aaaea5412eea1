"""What `mpiqe-score` scores: files, folders, globs, lists of paths, or a `datasets` dataset; decoded and cropped in
DataLoader workers."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import load_image
from .errors import UsageError


_GLOB_CHARS = set("*?[")
_SAVE_TO_DISK_MARKERS = ("state.json", "dataset_dict.json")


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


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
            count = 0
            for match in sorted(glob.glob(argument, recursive=recursive)):
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


def read_path_list(list_file: str) -> list[str]:
    """The paths in a text file, one per line (blank lines and lines starting with `#` skipped); `-` reads standard
    input. Paths are kept as written, so a missing file becomes an error row, not a failed run."""
    import sys

    what = "standard input" if list_file == "-" else list_file
    way_out = "pass a UTF-8 text file with one image path per line"
    try:
        if list_file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(list_file, "rb") as handle:
                data = handle.read()
    except FileNotFoundError:
        raise UsageError(f"--paths-from {list_file}: no such file; {way_out}") from None
    except IsADirectoryError:
        raise UsageError(
            f"--paths-from {list_file} is a folder; {way_out}, or give the folder itself as a PATH argument"
        ) from None
    except OSError as err:
        raise UsageError(f"--paths-from {list_file}: cannot read it ({err.strerror or err}); {way_out}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1  # bytes are read whole so that the line can be named
        raise UsageError(
            f"--paths-from {what}, line {line}: the byte 0x{data[err.start]:02x} is not UTF-8; {way_out}"
        ) from None
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# ----------------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------------


def load_input_dataset(name: str, config_name: str | None, split: str | None, streaming: bool, revision: str | None):
    """
    A `datasets.Dataset` (or `IterableDataset` with `streaming`) from a `save_to_disk` folder, Parquet files (a file, a
    glob or a folder of them) or a Hub dataset id. Without `split`, a dataset with a single split gives that split.
    """
    import datasets

    try:
        if os.path.isdir(name) and any(os.path.exists(os.path.join(name, m)) for m in _SAVE_TO_DISK_MARKERS):
            loaded = datasets.load_from_disk(name)
            if streaming:
                loaded = (
                    datasets.IterableDatasetDict({key: value.to_iterable_dataset() for key, value in loaded.items()})
                    if isinstance(loaded, datasets.DatasetDict)
                    else loaded.to_iterable_dataset()
                )
        elif name.endswith(".parquet"):
            files = sorted(glob.glob(name)) if _GLOB_CHARS & set(name) else [name]
            if not files or not all(os.path.isfile(path) for path in files):
                raise UsageError(f"--dataset {name}: no such Parquet file")
            # Checked here: `datasets` would log its own error line for the first file that differs, then fail.
            if len(_column_sets(files)) > 1:
                raise _not_one_schema(name, files)
            try:
                loaded = datasets.load_dataset("parquet", data_files=files, streaming=streaming)
            except datasets.exceptions.DatasetGenerationError as err:
                if len(files) == 1:
                    raise
                # the same column names: most often types that do not cast into each other (a TypeError or CastError)
                cause = err.__cause__ or err
                raise UsageError(
                    f"--dataset {name}: its Parquet files cannot be read as one dataset "
                    f"({str(cause).strip().splitlines()[0]}); if their column types differ, pass files of one schema"
                ) from None
        else:
            _check_hub_dataset(name, revision)
            loaded = datasets.load_dataset(name, config_name, streaming=streaming, revision=revision)
    except UsageError:
        raise
    except datasets.exceptions.DatasetGenerationError as err:  # its own message is generic; the cause says why
        cause = err.__cause__ or err
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UsageError(f"--dataset {name}: cannot load it: {first_line}") from err
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--dataset {name}: cannot load it: {first_line}") from err

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            wanted = "pass --split" if split is None else f"no split {split!r}"
            raise UsageError(f"--dataset {name}: {wanted}; its splits: {', '.join(splits)}")
        loaded = loaded[split]
    return loaded


def _column_sets(files: list[str]) -> dict[tuple[str, ...], str]:
    """The column names of `files` -> the first file with them."""
    import pyarrow.parquet as pq

    first_with: dict = {}
    for path in files:
        first_with.setdefault(tuple(pq.read_schema(path).names), path)
    return first_with


def _not_one_schema(name: str, files: list[str]) -> UsageError:
    """`... (a.parquet: image, id; b.parquet: image, label)`: the first file of each distinct schema."""
    sets = _column_sets(files)
    shown = [f"{os.path.basename(path)}: {', '.join(columns)}" for columns, path in list(sets.items())[:3]]
    more = f"; {len(sets) - 3} more schemas" if len(sets) > 3 else ""
    return UsageError(
        f"--dataset {name}: the Parquet files of --dataset {name} do not share their columns "
        f"({'; '.join(shown)}{more}); pass files of one schema"
    )


def _check_hub_dataset(name: str, revision: str | None) -> None:
    """
    Fails in seconds, naming the way out, when the Hub cannot answer for the dataset `name`: `datasets` would retry
    for half a minute before saying so. Offline (HF_HUB_OFFLINE), `datasets` reads its cache without asking.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(name, revision=revision, timeout=10)
    except HFValidationError:
        raise UsageError(
            f"--dataset {name}: no such folder or Parquet file, nor a Hub dataset id; pass a save_to_disk folder, "
            "Parquet files (a path or glob ending in .parquet) or a Hub id such as org/name"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise UsageError(
            f"--dataset {name}: the Hub refuses it ({type(err).__name__}: {str(err).splitlines()[0]}); check the id, "
            "or log in with `hf auth login` for a private or gated dataset"
        ) from None
    except Exception as err:  # no network: httpx errors, timeouts, proxies
        raise UsageError(
            f"--dataset {name}: the Hub at {constants.ENDPOINT} cannot be reached ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no answer'}); if the dataset is in the "
            "local cache, run with HF_HUB_OFFLINE=1, or pass a local save_to_disk folder or Parquet files"
        ) from None


def prepare_dataset_columns(dataset, name: str, image_column: str, id_column: str | None):
    """Checks the columns and keeps the images undecoded (`{"bytes", "path"}`): they are decoded by
    [`load_image`] in the process that scores them, and nowhere else."""
    import datasets

    columns = list(dataset.column_names or [])
    for flag, column in (("--image-column", image_column), ("--id-column", id_column)):
        if column is not None and column not in columns:
            raise UsageError(f"{flag} {column!r} is not a column of {name}; its columns: {', '.join(columns)}")
    keep = [image_column] + ([id_column] if id_column and id_column != image_column else [])
    dataset = dataset.select_columns(keep)
    feature = dataset.features[image_column] if dataset.features is not None else None
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Decoding and cropping, in DataLoader workers
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedBatch:
    """What a worker hands over: the crops of the images it could decode, and the failures."""

    keys: list[Any] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None  # (len(keys), num_crops, 3, height, width)
    failures: list[tuple[Any, str]] = field(default_factory=list)  # (key, message)

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader with `pin_memory=True` (CUDA), so that the copy to the GPU can overlap."""
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        return self


class _Cropper:
    def __init__(self, processor, num_crops: int | None):
        self.processor = processor
        self.num_crops = num_crops

    def __call__(self, key: Any, source: Any) -> tuple[Any, torch.Tensor | None, str | None]:
        try:
            image = load_image(source)
            pixel_values = self.processor(image, num_crops=self.num_crops, return_tensors="pt")["pixel_values"][0]
        except ValueError as err:
            return key, None, " ".join(str(err).split())
        return key, pixel_values, None


def collate(samples: list[tuple[Any, torch.Tensor | None, str | None]]) -> LoadedBatch:
    batch = LoadedBatch()
    crops = []
    for key, pixel_values, error in samples:
        if error is None:
            batch.keys.append(key)
            crops.append(pixel_values)
        else:
            batch.failures.append((key, error))
    if crops:
        batch.pixel_values = torch.stack(crops)
    return batch


class IndexedImages(torch.utils.data.Dataset):
    """The images at `positions` of `sources` (paths, or rows of a dataset's image column), keyed by `keys`."""

    def __init__(self, sources: Sequence, keys: Sequence, positions: Sequence[int], processor, num_crops=None):
        self.sources = sources
        self.keys = keys
        self.positions = positions
        self.crop = _Cropper(processor, num_crops)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        position = self.positions[index]
        return self.crop(self.keys[position], self.sources[position])


class ColumnView:
    """`dataset[column]` read one row at a time (the column is never loaded whole)."""

    def __init__(self, dataset, column: str):
        self.dataset = dataset
        self.column = column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][self.column]


class StreamedImages(torch.utils.data.IterableDataset):
    """The rows of a streamed dataset (already split between processes), skipping ids in `done`. Inside DataLoader
    workers `datasets` gives each worker its own shards of the stream."""

    def __init__(self, dataset, image_column: str, id_column: str, done: set[str], processor, num_crops=None):
        self.dataset = dataset
        self.image_column = image_column
        self.id_column = id_column
        self.done = done
        self.crop = _Cropper(processor, num_crops)

    def __iter__(self) -> Iterator:
        for example in self.dataset:
            key = example[self.id_column]
            if str(key) not in self.done:
                yield self.crop(key, example[self.image_column])
