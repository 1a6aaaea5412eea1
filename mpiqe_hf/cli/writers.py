"""
Where `mpiqe-score` puts its rows: streamed to stdout, appended to a CSV/JSONL output as they are scored, or
appended to a per-process JSONL part file (`<output>.part-<rank>.jsonl`) that is folded into the output at the end
(several processes, or Parquet, which cannot be appended to). Every write is flushed, so an interrupted or killed
run keeps every row it scored; `--resume` reads the output and any part files left behind, and skips their keys.

An output is changed only once it is known to be this tool's own: its sidecar `<output>.mpiqe.json` names the tool
and the settings its scores were made with (the model and the ones that change scores), so that CSV, JSONL and
Parquet stay plain files other tools read. While a run writes, it holds an exclusive lock on `<output>.mpiqe.lock`.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from .errors import UsageError


#: Columns after the key column (`path`, the `--id-column`, or `index`), in order.
RESULT_COLUMNS = ("score", "quality", "scene", "distortion", "normalized_score", "status", "error")
FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_PARQUET_CHUNK_ROWS = 8192
TOOL = "mpiqe-score"
SIDECAR_SUFFIX = ".mpiqe.json"
LOCK_SUFFIX = ".mpiqe.lock"


def format_from_extension(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in _EXTENSIONS:
        raise UsageError(
            f"cannot tell the format of --output {path} from its extension ({', '.join(sorted(_EXTENSIONS))}); "
            "pass --format"
        )
    return _EXTENSIONS[extension]


# ----------------------------------------------------------------------------------------------------------------------
# Row writers
# ----------------------------------------------------------------------------------------------------------------------


class RowWriter:
    """Writes rows (dicts in column order) to a text stream and flushes after each call."""

    def __init__(self, stream: TextIO, columns: list[str]):
        self.stream = stream
        self.columns = columns

    def write(self, rows: list[dict]) -> None:
        self.stream.write("".join(self.format_row(row) for row in rows))
        self.stream.flush()

    def format_row(self, row: dict) -> str:
        raise NotImplementedError

    def close(self) -> None:
        self.stream.flush()
        if self.stream not in (sys.stdout, sys.stderr):
            os.fsync(self.stream.fileno())
            self.stream.close()


class JSONLWriter(RowWriter):
    def format_row(self, row: dict) -> str:
        return json.dumps(row, ensure_ascii=False) + "\n"


class CSVWriter(RowWriter):
    def __init__(self, stream: TextIO, columns: list[str], header: bool):
        super().__init__(stream, columns)
        self._buffer = _LineBuffer()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        if header:
            self.stream.write(self._line(columns))
            self.stream.flush()

    def _line(self, values: list) -> str:
        self._csv.writerow(values)
        return self._buffer.take()

    def format_row(self, row: dict) -> str:
        return self._line(["" if row[column] is None else row[column] for column in self.columns])


class _LineBuffer:
    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


class TableWriter(RowWriter):
    """Aligned columns for a terminal; the key comes last so that rows can be printed as they come."""

    def __init__(self, stream: TextIO, columns: list[str], label_widths: dict[str, int]):
        super().__init__(stream, columns)
        self.widths = {"score": 10, **label_widths}
        header = {"score": "score", "quality": "quality", "scene": "scene", "distortion": "distortion"}
        self.stream.write(self._join(header, columns[0]))
        self.stream.flush()

    def _join(self, cells: dict, key: Any) -> str:
        parts = [str(cells["score"]).rjust(self.widths["score"])]
        parts += [str(cells[name]).ljust(self.widths[name]) for name in ("quality", "scene", "distortion")]
        return "  ".join(parts) + f"  {key}\n"

    def format_row(self, row: dict) -> str:
        key = row[self.columns[0]]
        if row["status"] != "ok":
            return f"{'error'.rjust(self.widths['score'])}  {key}: {row['error']}\n"
        cells = {
            "score": f"{row['score']:.4f}",
            "quality": row["quality"],
            "scene": row["scene"] or "-",
            "distortion": row["distortion"] or "-",
        }
        return self._join(cells, key)


# ----------------------------------------------------------------------------------------------------------------------
# The output file and its part files
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ScoredSoFar:
    """What an existing output (with its part files) already holds."""

    keys: set[str]
    errors: int


def _truncate_partial_line(path: str) -> None:
    """Drops an unfinished last line (a process killed mid-write), so that appending starts on a fresh line."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            if end == size and block.endswith(b"\n"):
                return
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            end = start
        handle.truncate(0)


def _complete_lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield line


class ScoreOutput:
    """The `--output` file in `fmt`, whose first column is `columns[0]`, and its part files."""

    def __init__(self, path: str, fmt: str, columns: list[str]):
        self.path = path
        self.format = fmt
        self.columns = columns

    # -- state -----------------------------------------------------------------------------------------------------

    def part_path(self, rank: int) -> str:
        return f"{self.path}.part-{rank:05d}.jsonl"

    def parts(self) -> list[str]:
        return sorted(glob.glob(glob.escape(self.path) + ".part-*.jsonl"))

    def has_results(self) -> bool:
        return os.path.exists(self.path) or bool(self.parts())

    def describe_existing(self) -> str:
        parts = self.parts()
        if not parts:
            return self.path
        listed = f"{len(parts)} part file(s) {self.path}.part-*.jsonl"
        return f"{self.path} and {listed}" if os.path.exists(self.path) else listed

    def remove(self) -> None:
        for path in [self.path, *self.parts()]:
            if os.path.exists(path):
                os.remove(path)

    # -- the folder, the sidecar and the lock ------------------------------------------------------------------------

    @property
    def sidecar_path(self) -> str:
        return self.path + SIDECAR_SUFFIX

    @property
    def lock_path(self) -> str:
        return self.path + LOCK_SUFFIX

    def check_folder(self) -> None:
        """The output can be created where it is meant to go (checked before the model loads)."""
        check_writable_folder(os.path.dirname(os.path.abspath(self.path)), f"--output {self.path}", create=False)
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            raise UsageError(f"--output {self.path} is not a regular file; choose a file name")
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise UsageError(f"--output {self.path} is read-only; choose another --output")

    def read_sidecar(self) -> dict | None:
        """The record of the run that wrote the output, or `None` when there is none."""
        if not os.path.exists(self.sidecar_path):
            return None
        try:
            with open(self.sidecar_path, encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(
                f"{self.sidecar_path} cannot be read ({err}); {self.path} is left untouched: move both away or "
                "choose another --output"
            ) from err
        if not isinstance(record, dict) or record.get("tool") != TOOL or not isinstance(record.get("settings"), dict):
            raise UsageError(
                f"{self.sidecar_path} was not written by {TOOL}; {self.path} is left untouched: move both away or "
                "choose another --output"
            )
        return record

    def check_ownership(self) -> dict | None:
        """
        The sidecar's record when the output holds results; refuses an output that is not this tool's own (no
        sidecar), unless it is empty, which nothing can be lost from.
        """
        record = self.read_sidecar()
        if record is None and self.has_results() and (self.parts() or os.path.getsize(self.path) > 0):
            raise UsageError(
                f"{self.describe_existing()} was not written by {TOOL} (there is no {self.sidecar_path} beside it), "
                "so it is left untouched, --resume and --overwrite included: choose another --output, or move it "
                "away yourself"
            )
        return record

    def check_settings(self, record: dict, settings: dict) -> None:
        """Refuses to resume an output whose rows were scored with other `settings` (only the keys given count)."""
        recorded = record["settings"]
        changed = [key for key in settings if recorded.get(key) != settings[key]]
        if changed:
            differences = "; ".join(
                f"{key} {_brief(recorded.get(key))} there, {_brief(settings[key])} now" for key in changed
            )
            raise UsageError(
                f"--resume: the rows in {self.path} were scored with other settings ({differences}; see "
                f"{self.sidecar_path}); run with the same settings, or --overwrite to replace them, or choose another "
                "--output"
            )

    def write_sidecar(self, settings: dict) -> None:
        """Records the tool and `settings` before any row is written (renamed into place: never half-written)."""
        from .. import __version__

        record = {"tool": TOOL, "version": __version__, "settings": settings}
        temporary = f"{self.sidecar_path}.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, self.sidecar_path)

    def lock(self) -> OutputLock:
        """Takes the lock of this output, or refuses in one line when another run holds it."""
        return OutputLock(self.lock_path, self.path)

    # -- reading ---------------------------------------------------------------------------------------------------

    def _check_columns(self, found: list[str]) -> None:
        if list(found) != list(self.columns):
            raise UsageError(
                f"{self.path} has the columns {','.join(found)} but this run writes {','.join(self.columns)}; "
                "pass --overwrite or choose another --output"
            )

    def _output_rows(self, columns: list[str]) -> Iterator[tuple]:
        """(values of `columns`) for each row of the output file."""
        if not os.path.exists(self.path):
            return
        if self.format == "csv":
            with open(self.path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    return
                self._check_columns(header)
                indices = [header.index(column) for column in columns]
                for values in reader:
                    if len(values) == len(header):
                        yield tuple(values[index] for index in indices)
        elif self.format == "jsonl":
            for number, line in enumerate(_complete_lines(self.path), start=1):
                row = _parse_json_row(line, self.path, number)
                if number == 1:
                    self._check_columns(list(row))
                yield tuple(row.get(column) for column in columns)
        else:
            import pyarrow.parquet as pq

            try:
                parquet = pq.ParquetFile(self.path)
            except Exception as err:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
                raise UsageError(f"{self.path} is not a readable Parquet file ({err}); pass --overwrite") from err
            self._check_columns(parquet.schema_arrow.names)
            for batch in parquet.iter_batches(columns=columns):
                yield from zip(*(batch.column(column).to_pylist() for column in columns))

    def _part_rows(self) -> Iterator[dict]:
        for path in self.parts():
            for number, line in enumerate(_complete_lines(path), start=1):
                row = _parse_json_row(line, path, number)
                if number == 1:
                    self._check_columns(list(row))
                yield row

    def scored_so_far(self) -> ScoredSoFar:
        """The keys (as strings) already in the output and its part files, and how many of them are errors."""
        keys: set[str] = set()
        errors = 0
        key_column = self.columns[0]
        rows = self._output_rows([key_column, "status"])
        parts = ((row[key_column], row["status"]) for row in self._part_rows())
        for source in (rows, parts):
            for key, status in source:
                text = str(key)
                if text not in keys:
                    keys.add(text)
                    errors += status != "ok"
        return ScoredSoFar(keys, errors)

    # -- writing ---------------------------------------------------------------------------------------------------

    def open_for_append(self) -> RowWriter:
        """A writer appending to the CSV/JSONL output itself (one process)."""
        if os.path.exists(self.path):
            _truncate_partial_line(self.path)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        stream = open(self.path, "a", encoding="utf-8", newline="")
        if self.format == "csv":
            return CSVWriter(stream, self.columns, header=new)
        return JSONLWriter(stream, self.columns)

    def open_part(self, rank: int) -> RowWriter:
        path = self.part_path(rank)
        if os.path.exists(path):
            _truncate_partial_line(path)
        return JSONLWriter(open(path, "a", encoding="utf-8"), self.columns)

    def recover(self) -> None:
        """Before reading an output left by an earlier run: drops its unfinished last line, folds its part files."""
        if self.format != "parquet" and os.path.exists(self.path):
            _truncate_partial_line(self.path)
        self.fold_parts()

    def fold_parts(self) -> None:
        """
        Moves the rows of the part files into the output and removes the part files. Rows whose key the output
        already holds are skipped, so folding again after an interruption of this very step duplicates nothing.
        """
        parts = self.parts()
        if not parts:
            return
        key_column = self.columns[0]
        present = {str(key) for (key,) in self._output_rows([key_column])}

        def new_rows() -> Iterator[dict]:
            for row in self._part_rows():
                key = str(row[key_column])
                if key not in present:
                    present.add(key)
                    yield row

        if self.format == "parquet":
            self._rewrite_parquet(new_rows())
        else:
            writer = self.open_for_append()
            try:
                for chunk in _chunks(new_rows(), _PARQUET_CHUNK_ROWS):
                    writer.write(chunk)
            finally:
                writer.close()
        for path in parts:
            os.remove(path)

    def _rewrite_parquet(self, rows: Iterable[dict]) -> None:
        """Parquet files cannot be appended to: the old rows and the new ones go to a new file, renamed into place."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = os.path.dirname(os.path.abspath(self.path))
        handle, temporary = tempfile.mkstemp(prefix=".mpiqe-score-", suffix=".parquet", dir=folder)
        os.close(handle)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes it 0600; the output gets a new file's mode
        writer = schema = None
        try:
            if os.path.exists(self.path):
                existing = pq.ParquetFile(self.path)
                schema = existing.schema_arrow
                writer = pq.ParquetWriter(temporary, schema)
                for batch in existing.iter_batches():
                    writer.write_batch(batch)
            for chunk in _chunks(rows, _PARQUET_CHUNK_ROWS):
                if writer is None:
                    schema = _parquet_schema(self.columns[0], chunk[0][self.columns[0]])
                    writer = pq.ParquetWriter(temporary, schema)
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            if writer is None:
                return
            writer.close()
            writer = None
            os.replace(temporary, self.path)
        finally:
            if writer is not None:
                writer.close()
            if os.path.exists(temporary):
                os.remove(temporary)


class OutputLock:
    """
    An exclusive `flock` on `<output>.mpiqe.lock`, which holds the pid of its owner and is removed on release. The
    lock file is unlinked while still locked, so a run that opened it just before checks, once it holds the lock, that
    the file it locked is still the one at that path.
    """

    def __init__(self, lock_path: str, output_path: str):
        self.path = lock_path
        self.fd = None
        while self.fd is None:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                owner = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise UsageError(
                    f"--output {output_path} is being written by another {TOOL} run (pid {owner}, lock "
                    f"{lock_path}); wait for it to end, or choose another --output"
                ) from None
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
            else:
                os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.remove(self.path)
            os.close(self.fd)
            self.fd = None


def check_writable_folder(folder: str, what: str, create: bool) -> None:
    """
    One line naming `what` when `folder` cannot take new files: missing (or, with `create`, has no existing parent
    that could hold it), a dangling or looping symbolic link, not a folder, or not writable. With `create`, a missing
    folder is made.
    """
    existing = folder
    while not os.path.exists(existing):
        # A dangling or looping link does not "exist", yet nothing can be made in its place (makedirs would fail).
        if os.path.islink(existing):
            raise UsageError(
                f"{what}: {existing} is a symbolic link to {os.readlink(existing)}, which is missing or loops back "
                "on itself; fix or remove the link, or choose another folder"
            )
        parent = os.path.dirname(existing)
        if not create or parent == existing:
            raise UsageError(f"{what}: the folder {folder} does not exist; create it first or choose another")
        existing = parent
    if not os.path.isdir(existing):
        raise UsageError(f"{what}: {existing} is a file, not a folder; choose another")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: cannot create files in {existing} (permission denied); choose another")
    if existing != folder:
        os.makedirs(folder, exist_ok=True)


def _brief(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _parquet_schema(key_column: str, example_key: Any):
    import pyarrow as pa

    text, number = pa.string(), pa.float64()
    return pa.schema(
        [
            (key_column, pa.scalar(example_key).type),
            ("score", number),
            ("quality", text),
            ("scene", text),
            ("distortion", text),
            ("normalized_score", number),
            ("status", text),
            ("error", text),
        ]
    )


def _parse_json_row(line: str, path: str, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}, line {number}: not a JSON row ({err.msg}); pass --overwrite") from err
    if not isinstance(row, dict):
        raise UsageError(f"{path}, line {number}: not a JSON object; pass --overwrite")
    return row


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
