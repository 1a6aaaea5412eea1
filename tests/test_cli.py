"""`mpiqe-score` on a tiny model: in-process through `main(argv)`, and in real subprocesses where signals and several
processes matter (SIGINT, SIGTERM, torchrun with two processes)."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mpiqe_hf.cli.inputs as cli_inputs
from mpiqe_hf import MPIQEImageProcessor, MPIQEModel, load_image
from mpiqe_hf.cli import RESULT_COLUMNS, collect_files, main
from mpiqe_hf.cli import scoring as cli_scoring


COLUMNS = ["path", *RESULT_COLUMNS]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("cli-model")
    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    model.save_pretrained(folder)
    MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def expected_score(tiny_checkpoint):
    """The model's own float32 score of an image source (path or bytes)."""
    model = MPIQEModel.from_pretrained(tiny_checkpoint)
    processor = MPIQEImageProcessor.from_pretrained(tiny_checkpoint)

    def score(source):
        pixel_values = processor(load_image(source), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return float(model.to_native_scale(model(pixel_values).score)[0])

    return score


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (36, 52, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(folder / "nested" / "photo.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not an image extension")
    return folder


VALID = {"gray.png", "rgba.png", "deep16.png", "photo.jpg"}


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """24 small photos, named in scoring order."""
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for index in range(24):
        pixels = rng.integers(0, 255, (32 + index, 44, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def reference_output(tiny_checkpoint, many_images, tmp_path_factory):
    """A single-process float32 run over `many_images` into a JSONL file (and its sidecar)."""
    target = tmp_path_factory.mktemp("reference") / "scores.jsonl"
    code = main(
        [
            str(many_images),
            "-m",
            tiny_checkpoint,
            "-o",
            str(target),
            "--dtype",
            "float32",
            "--num-workers",
            "0",
            "-b",
            "5",
        ]
    )
    assert code == 0
    return target


@pytest.fixture(scope="module")
def reference_rows(reference_output):
    """The rows of `reference_output`: key -> row."""
    return {row["path"]: row for row in _read_rows(reference_output)}


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _read_rows(path):
    path = str(path)
    if path.endswith(".csv"):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            for column in ("score", "normalized_score"):
                row[column] = float(row[column]) if row[column] else None
        return rows
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def decoded(monkeypatch):
    """Records every source the CLI decodes in this process (use with --num-workers 0)."""
    seen = []
    original = cli_inputs.load_image

    def recording(source):
        seen.append(source)
        return original(source)

    monkeypatch.setattr(cli_inputs, "load_image", recording)
    return seen


# ----------------------------------------------------------------------------------------------------------------------
# Scores, formats, error rows
# ----------------------------------------------------------------------------------------------------------------------


def test_folder_gives_model_scores_and_an_error_row_for_the_corrupt_file(
    capsys, tiny_checkpoint, image_folder, expected_score
):
    code, out, err = _run(
        capsys,
        [
            str(image_folder),
            "--model",
            tiny_checkpoint,
            "--format",
            "jsonl",
            "--batch-size",
            "3",
            "--no-progress",
            "--dtype",
            "float32",
        ],
    )
    assert code == 1  # some inputs failed
    rows = [json.loads(line) for line in out.splitlines()]
    assert [list(row) for row in rows] == [COLUMNS] * 5
    by_name = {row["path"].split("/")[-1]: row for row in rows}
    assert set(by_name) == VALID | {"corrupt.jpg"}
    broken = by_name.pop("corrupt.jpg")
    assert broken["status"] == "error" and broken["score"] is None
    assert str(image_folder / "corrupt.jpg") in broken["error"] and "\n" not in broken["error"]
    assert "notes.txt" not in out + err
    for row in by_name.values():
        assert row["status"] == "ok" and row["error"] is None
        assert row["score"] == pytest.approx(expected_score(row["path"]), abs=1e-5)
        assert row["score"] == pytest.approx(1.0 + 4.0 * row["normalized_score"], abs=1e-5)
        assert row["quality"] in ("bad", "poor", "fair", "good", "excellent")
    # the device and dtype are said once
    assert err.count("scoring on cpu in float32") == 1


def test_decoding_in_workers_and_batch_size_do_not_change_scores(capsys, tiny_checkpoint, many_images, reference_rows):
    code, out, _ = _run(
        capsys,
        [str(many_images), "-m", tiny_checkpoint, "-f", "csv", "--dtype", "float32", "--num-workers", "2", "-b", "7"],
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["path"] for row in rows] == list(reference_rows)  # input order
    for row in rows:
        assert float(row["score"]) == pytest.approx(reference_rows[row["path"]]["score"], abs=1e-5)


def test_bfloat16_is_the_default_where_the_cpu_computes_it(capsys, tiny_checkpoint, image_folder, monkeypatch):
    monkeypatch.setattr(cli_scoring, "cpu_bfloat16_unit", lambda: "AMX")
    assert cli_scoring.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16, "auto: this CPU has AMX")
    code, _, err = _run(capsys, [str(image_folder / "gray.png"), "-m", tiny_checkpoint, "--num-workers", "0"])
    assert code == 0 and "scoring on cpu in bfloat16 (auto: this CPU has AMX)" in err
    monkeypatch.setattr(cli_scoring, "cpu_bfloat16_unit", lambda: None)
    assert cli_scoring.resolve_dtype("auto", torch.device("cpu"))[0] == torch.float32
    assert cli_scoring.resolve_dtype("bfloat16", torch.device("cpu")) == (torch.bfloat16, "--dtype")


def test_bfloat16_scores_are_not_rounded_to_bfloat16(capsys, tiny_checkpoint, many_images, reference_rows):
    """The vision tower runs in bfloat16, the score head in float32: bfloat16 scores would step by 2^-8 and tie."""
    code, out, _ = _run(
        capsys, [str(many_images), "-m", tiny_checkpoint, "-f", "jsonl", "--dtype", "bfloat16", "--num-workers", "0"]
    )
    assert code == 0
    scores = [json.loads(line)["normalized_score"] for line in out.splitlines()]
    representable = [score == torch.tensor(score).bfloat16().item() for score in scores]
    assert len(scores) == 24 and sum(representable) <= 2
    reference = {path: row["normalized_score"] for path, row in reference_rows.items()}
    spread = max(1.0, *(abs(value) for value in reference.values()))
    for line in out.splitlines():
        row = json.loads(line)
        assert row["normalized_score"] == pytest.approx(reference[row["path"]], abs=0.05 * spread)


def test_csv_glob_paths_from_and_no_recursive(capsys, tiny_checkpoint, image_folder, tmp_path):
    target = tmp_path / "scores.csv"
    code, out, err = _run(
        capsys,
        [
            str(image_folder / "*.png"),
            "--model",
            tiny_checkpoint,
            "--output",
            str(target),
            "--num-crops",
            "1",
            "--device",
            "cpu",
            "--num-workers",
            "0",
        ],
    )
    assert code == 0, err
    assert out == ""
    rows = _read_rows(target)
    assert {row["path"].split("/")[-1] for row in rows} == {"gray.png", "rgba.png", "deep16.png"}

    listing = tmp_path / "list.txt"
    listing.write_text(f"{image_folder / 'gray.png'}\n\n{tmp_path / 'gone.png'}\n")
    code, out, _ = _run(
        capsys, ["--paths-from", str(listing), "-m", tiny_checkpoint, "-f", "jsonl", "--num-workers", "0"]
    )
    statuses = {json.loads(line)["path"]: json.loads(line) for line in out.splitlines()}
    assert code == 1 and statuses[str(image_folder / "gray.png")]["status"] == "ok"
    assert "no such file" in statuses[str(tmp_path / "gone.png")]["error"]

    code, out, err = _run(capsys, [str(image_folder), "--no-recursive", "-m", tiny_checkpoint, "--num-workers", "0"])
    assert code == 1  # the corrupt file
    assert (
        "photo.jpg" not in out
        and "gray.png" in out
        and out.splitlines()[0].split()[:3] == ["score", "quality", "scene"]
    )


# ----------------------------------------------------------------------------------------------------------------------
# Existing outputs: refuse, overwrite, resume
# ----------------------------------------------------------------------------------------------------------------------


def test_an_existing_output_is_refused_in_one_line_overwritten_or_resumed(
    capsys, tiny_checkpoint, many_images, reference_rows, tmp_path, decoded
):
    target = tmp_path / "scores.csv"
    argv = [str(many_images), "-m", tiny_checkpoint, "-o", str(target), "--dtype", "float32", "--num-workers", "0"]
    previous = "path,score\nsomething,1.0\n"
    target.write_text(previous)
    code, out, err = _run(capsys, argv)
    assert code == 2 and target.read_text() == previous
    assert len(err.strip().splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    assert decoded == []

    for flag in ("--resume", "--overwrite"):  # not this tool's file: neither resumed nor replaced
        code, _, err = _run(capsys, [*argv, flag])
        assert code == 2 and "not written by mpiqe-score" in err and target.read_text() == previous
    target.unlink()

    assert _run(capsys, argv)[0] == 0
    code, _, err = _run(capsys, argv)
    assert code == 2 and "already holds results" in err
    assert _run(capsys, [*argv, "--overwrite"])[0] == 0
    full = target.read_text()
    assert [row["path"] for row in _read_rows(target)] == list(reference_rows)

    # a run killed mid-write: 9 complete rows and half of the 10th
    lines = full.splitlines(keepends=True)
    target.write_text("".join(lines[:10]) + lines[10][:12])
    decoded.clear()
    code, _, err = _run(capsys, [*argv, "--resume"])
    assert code == 0, err
    assert "9 kept from before" in err
    assert decoded == [str(many_images / name) for name in sorted(os.listdir(many_images))][9:]
    rows = _read_rows(target)
    assert [row["path"] for row in rows] == list(reference_rows)
    for row in rows:
        assert row["score"] == pytest.approx(reference_rows[row["path"]]["score"], abs=1e-5)

    finished = target.read_text()
    decoded.clear()
    code, _, err = _run(capsys, [*argv, "--resume"])
    assert code == 0 and decoded == [] and target.read_text() == finished


SITECUSTOMIZE = """
import os, time
import PIL.Image

_open = PIL.Image.open


def _watched_open(fp, *args, **kwargs):
    log = os.environ.get("MPIQE_TEST_OPEN_LOG")
    if log and isinstance(fp, (str, os.PathLike)):
        with open(log, "a") as handle:
            handle.write(f"{os.environ.get('RANK', '0')}\\t{os.fspath(fp)}\\n")
    time.sleep(float(os.environ.get("MPIQE_TEST_OPEN_DELAY", "0")))
    return _open(fp, *args, **kwargs)


PIL.Image.open = _watched_open
"""


@pytest.fixture
def watched_env(tmp_path):
    """Environment for a child process whose image opens are logged (rank, path) and optionally slowed down."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")])
    env["MPIQE_TEST_OPEN_LOG"] = str(tmp_path / "opened.tsv")
    return env


def _opened(env):
    with open(env["MPIQE_TEST_OPEN_LOG"]) as handle:
        return [tuple(line.rstrip("\n").split("\t")) for line in handle]


def _interrupt_once_rows_exist(command, env, path, signum, min_rows=3):
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(path) and open(path).read().count("\n") >= min_rows:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_ctrl_c_keeps_the_rows_and_resume_scores_each_image_once(
    capsys, tiny_checkpoint, many_images, reference_rows, tmp_path, watched_env, decoded
):
    target = tmp_path / "scores.csv"
    argv = [str(many_images), "-m", tiny_checkpoint, "-o", str(target), "--dtype", "float32", "-b", "2"]
    watched_env["MPIQE_TEST_OPEN_DELAY"] = "0.15"
    code, err = _interrupt_once_rows_exist(
        [sys.executable, "-m", "mpiqe_hf.cli", *argv], watched_env, target, signal.SIGINT
    )
    assert code == 130, err
    assert "--resume" in err and "Traceback" not in err
    kept = _read_rows(target)
    assert 2 <= len(kept) < 24
    assert [row["path"] for row in kept] == list(reference_rows)[: len(kept)]

    code, _, err = _run(capsys, [*argv, "--resume", "--num-workers", "0"])
    assert code == 0, err
    kept_paths = {row["path"] for row in kept}
    assert sorted(decoded) == sorted(set(reference_rows) - kept_paths)  # nothing scored twice
    rows = _read_rows(target)
    assert sorted(row["path"] for row in rows) == sorted(reference_rows)
    for row in rows:
        assert row["score"] == pytest.approx(reference_rows[row["path"]]["score"], abs=1e-5)


def test_sigterm_keeps_the_rows_in_a_readable_parquet_file(
    capsys, tiny_checkpoint, many_images, reference_rows, tmp_path, monkeypatch
):
    target = tmp_path / "scores.parquet"
    argv = [
        str(many_images),
        "-m",
        tiny_checkpoint,
        "-o",
        str(target),
        "--dtype",
        "float32",
        "-b",
        "2",
        "--num-workers",
        "0",
    ]
    batches = []
    score = cli_scoring.TorchScorer.score_batch

    def terminated_at_the_third_batch(self, pixel_values):
        batches.append(len(pixel_values))
        if len(batches) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return score(self, pixel_values)

    monkeypatch.setattr(cli_scoring.TorchScorer, "score_batch", terminated_at_the_third_batch)
    code, _, err = _run(capsys, argv)
    assert code == 143, err
    kept = _read_rows(target)  # a complete Parquet file, no part file left
    assert len(kept) == 4 and not list(tmp_path.glob("*.part-*"))
    assert [row["path"] for row in kept] == list(reference_rows)[:4]

    monkeypatch.setattr(cli_scoring.TorchScorer, "score_batch", score)
    assert _run(capsys, [*argv, "--resume"])[0] == 0
    rows = _read_rows(target)
    assert sorted(row["path"] for row in rows) == sorted(reference_rows)
    for row in rows:
        assert row["score"] == pytest.approx(reference_rows[row["path"]]["score"], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Several processes
# ----------------------------------------------------------------------------------------------------------------------


def test_a_reader_that_closes_standard_output_ends_the_run_quietly(tiny_checkpoint, many_images, reference_rows):
    """`mpiqe-score folder | head -1`: no traceback, exit status 141 as for SIGPIPE."""
    command = [
        sys.executable,
        "-m",
        "mpiqe_hf.cli",
        str(many_images),
        "-m",
        tiny_checkpoint,
        "--format",
        "csv",
        "--dtype",
        "float32",
        "-b",
        "1",
        "--num-workers",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    header, first = process.stdout.readline(), process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert header.rstrip("\n").split(",") == COLUMNS
    assert first.split(",")[0] in reference_rows


def test_torchrun_two_processes_resume_shards_and_match_one_process(
    tiny_checkpoint, many_images, reference_output, reference_rows, tmp_path, watched_env
):
    """A 2-process run resuming an interrupted one: the output rows plus a shard's part file left behind are kept,
    the other images are each opened by exactly one process, and the merged output equals one process's scores."""
    target = tmp_path / "scores.jsonl"
    names = list(reference_rows)
    with open(target, "w") as handle:
        for name in names[:5]:
            handle.write(json.dumps(reference_rows[name]) + "\n")
    with open(f"{target}.part-00001.jsonl", "w") as handle:
        for name in names[12:15]:
            handle.write(json.dumps(reference_rows[name]) + "\n")
        handle.write('{"path": "cut short')  # a process killed mid-write
    shutil.copy(f"{reference_output}.mpiqe.json", f"{target}.mpiqe.json")  # the same settings
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mpiqe_hf.cli",
        str(many_images),
        "-m",
        tiny_checkpoint,
        "-o",
        str(target),
        "--resume",
        "--dtype",
        "float32",
        "-b",
        "3",
        "--num-workers",
        "1",
    ]
    result = subprocess.run(command, env=watched_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("scoring on cpu in float32 (--dtype), 2 process(es)") == 1

    opened = _opened(watched_env)
    ranks_by_path = {}
    for rank, path in opened:
        ranks_by_path.setdefault(path, []).append(rank)
    assert sorted(ranks_by_path) == sorted(names[5:12] + names[15:])  # only what was missing
    assert all(len(ranks) == 1 for ranks in ranks_by_path.values())  # each opened once, by one process
    assert {ranks[0] for ranks in ranks_by_path.values()} == {"0", "1"}

    rows = _read_rows(target)
    assert sorted(row["path"] for row in rows) == sorted(names)  # each image once
    assert not list(tmp_path.glob("*.part-*"))
    for row in rows:
        assert row["score"] == pytest.approx(reference_rows[row["path"]]["score"], abs=1e-5)
        assert row["scene"] == reference_rows[row["path"]]["scene"]


# ----------------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_dataset(many_images):
    """8 images (the 4th one corrupt) with string ids, as a `datasets.Dataset` with an Image column."""
    import datasets

    encoded = [(many_images / f"img{index:02d}.png").read_bytes() for index in range(8)]
    encoded[3] = b"\x89PNG\r\n\x1a\n not really"
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": None} for data in encoded],
            "photo_id": [f"p-{i}" for i in range(8)],
            "extra": list(range(8)),
        },
        features=datasets.Features(
            {"image": datasets.Image(), "photo_id": datasets.Value("string"), "extra": datasets.Value("int64")}
        ),
    )


def test_parquet_dataset_keeps_its_ids(capsys, tiny_checkpoint, image_dataset, many_images, expected_score, tmp_path):
    data = tmp_path / "photos.parquet"
    image_dataset.to_parquet(str(data))
    target = tmp_path / "scores.parquet"
    code, _, err = _run(
        capsys,
        [
            "--dataset",
            str(data),
            "--id-column",
            "photo_id",
            "-m",
            tiny_checkpoint,
            "-o",
            str(target),
            "--dtype",
            "float32",
            "--num-workers",
            "1",
            "-b",
            "3",
        ],
    )
    assert code == 1, err
    (tmp_path / "plain.txt").write_text("")
    assert os.stat(target).st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777  # a new file's mode
    rows = _read_rows(target)
    assert list(rows[0]) == ["photo_id", *RESULT_COLUMNS]
    assert sorted(row["photo_id"] for row in rows) == [f"p-{i}" for i in range(8)]
    for row in rows:
        index = int(row["photo_id"][2:])
        if index == 3:
            assert row["status"] == "error" and "not a recognised image format" in row["error"]
        else:
            assert row["score"] == pytest.approx(expected_score(str(many_images / f"img{index:02d}.png")), abs=1e-5)

    code, _, err = _run(capsys, ["--dataset", str(data), "--image-column", "picture", "-m", tiny_checkpoint])
    assert code == 2 and "'picture' is not a column" in err and "photo_id" in err


def test_save_to_disk_folder_and_streaming(capsys, tiny_checkpoint, image_dataset, tmp_path, decoded):
    folder = tmp_path / "saved"
    image_dataset.save_to_disk(str(folder))
    code, out, _ = _run(
        capsys,
        ["--dataset", str(folder), "-m", tiny_checkpoint, "-f", "jsonl", "--dtype", "float32", "--num-workers", "0"],
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and sorted(row["index"] for row in rows) == list(range(8))
    assert all(isinstance(source, dict) and source["bytes"] for source in decoded)  # decoded by the CLI, once each
    assert len(decoded) == 8

    target = tmp_path / "streamed.jsonl"
    streamed_argv = [
        "--dataset",
        str(folder),
        "--streaming",
        "--id-column",
        "photo_id",
        "-m",
        tiny_checkpoint,
        "-o",
        str(target),
        "--dtype",
        "float32",
        "--num-workers",
        "0",
    ]
    assert _run(capsys, streamed_argv)[0] == 1
    with open(target) as handle:  # as a run stopped after 4 rows leaves it
        half = [json.loads(line)["photo_id"] for line in handle][:4]
    target.write_text("".join(target.read_text().splitlines(keepends=True)[:4]))
    code, _, err = _run(capsys, [*streamed_argv, "--resume"])
    assert code == 1, err  # the corrupt row, kept or new
    streamed = _read_rows(target)
    assert sorted(row["photo_id"] for row in streamed) == [f"p-{i}" for i in range(8)]
    by_id = {f"p-{row['index']}": row for row in rows}
    for row in streamed:
        assert row["score"] == pytest.approx(by_id[row["photo_id"]]["score"], abs=1e-5) or row["status"] == "error"
    assert "4 kept from before" in err and set(half) <= {row["photo_id"] for row in streamed}


# ----------------------------------------------------------------------------------------------------------------------
# Usage errors
# ----------------------------------------------------------------------------------------------------------------------


def test_cuda_without_cuda_is_one_line_and_exit_2(capsys, tiny_checkpoint, image_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = _run(capsys, [str(image_folder), "-m", tiny_checkpoint, "--device", "cuda"])
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "CUDA is not available" in err


def test_a_model_that_is_not_mp_iqe_is_refused_naming_its_type(capsys, image_folder, tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path / "vit")
    capsys.readouterr()
    code, _, err = _run(capsys, [str(image_folder), "-m", str(tmp_path / "vit")])
    assert code == 2 and "'vit'" in err and "MP-IQE" in err and len(err.strip().splitlines()) == 1


def test_no_progress_silences_the_weight_loading_bar_too(tiny_checkpoint, image_folder):
    command = [sys.executable, "-m", "mpiqe_hf.cli", str(image_folder / "gray.png"), "-m", tiny_checkpoint]
    quiet = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, timeout=120)
    shown = subprocess.run([*command, "--progress"], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == shown.returncode == 0, quiet.stderr + shown.stderr
    assert "Loading weights" in shown.stderr and "Loading weights" not in quiet.stderr


def test_a_model_out_of_reach_is_named_in_seconds(capsys, image_folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    code, out, err = _run(capsys, [str(image_folder), "-m", "org/mp-iqe-koniq", "-o", str(tmp_path / "s.csv")])
    assert code == 2 and out == ""
    assert "'org/mp-iqe-koniq'" in err and "HF_HUB_OFFLINE" in err and "local folder" in err
    assert "Retrying" not in err and time.monotonic() - start < 30
    assert not (tmp_path / "s.csv").exists()
    code, _, err = _run(capsys, [str(image_folder), "-m", str(tmp_path / "nowhere")])
    assert code == 2 and "no such folder" in err


def test_usage_errors(capsys, tiny_checkpoint, tmp_path):
    for argv in (
        [str(tmp_path), "--model", tiny_checkpoint, "--batch-size", "0"],
        [str(tmp_path)],
        ["-m", tiny_checkpoint],
        [str(tmp_path), "-m", tiny_checkpoint, "--resume"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    code, _, err = _run(capsys, [str(tmp_path / "missing.png"), "--model", tiny_checkpoint])
    assert code == 2 and "missing.png" in err and "no such file" in err
    Image.new("RGB", (30, 30)).save(tmp_path / "ok.png")
    code, _, err = _run(capsys, [str(tmp_path / "ok.png"), "--model", str(tmp_path / "no-model-here")])
    assert code == 2 and "no-model-here': no such folder" in err
    code, _, err = _run(capsys, [str(tmp_path / "ok.png"), "-m", tiny_checkpoint, "-o", str(tmp_path / "out.txt")])
    assert code == 2 and "--format" in err


def test_collect_files_order_and_duplicates(image_folder):
    files, problems = collect_files([str(image_folder), str(image_folder / "gray.png"), str(image_folder / "x*.bmp")])
    assert len(set(files)) == len(files) == 5  # four valid + the corrupt .jpg, the explicit duplicate dropped
    assert files == sorted(files)
    assert problems == [(str(image_folder / "x*.bmp"), "the pattern matches no files")]


def test_text_features_are_computed_once_per_run(capsys, tiny_checkpoint, many_images, monkeypatch):
    calls = []
    original = MPIQEModel.get_text_features

    def counted(self):
        calls.append(1)
        return original(self)

    forwards = []
    forward = MPIQEModel.forward

    def checked_forward(self, pixel_values, *args, text_features=None, **kwargs):
        forwards.append(text_features is not None)
        return forward(self, pixel_values, *args, text_features=text_features, **kwargs)

    monkeypatch.setattr(MPIQEModel, "get_text_features", counted)
    monkeypatch.setattr(MPIQEModel, "forward", checked_forward)
    code, _, _ = _run(
        capsys, [str(many_images), "-m", tiny_checkpoint, "-f", "jsonl", "-b", "4", "--num-workers", "0"]
    )
    assert code == 0
    assert len(calls) == 1 and forwards == [True] * 6  # 24 images in 6 batches, one text pass
