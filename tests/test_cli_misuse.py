"""`mpiqe-score` used wrongly: each misuse gets one line naming the input and the way out, the documented exit
status, and no file of the workspace (inputs, earlier outputs, foreign files) changes, appears or disappears."""

import fcntl
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor
from mpiqe_hf.cli import main
from mpiqe_hf.cli import scoring as cli_scoring
from mpiqe_hf.cli import writers as cli_writers
from mpiqe_hf.cli.command import map_paths


FAST = ["--dtype", "float32", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workspace: a tiny model, a second one, photos (`a.jpg`, `a.png`, `sub/a.jpg`), a path list, Parquet
    datasets with a repeated id and with null ids, foreign files, and `own.csv` written by mpiqe-score over `imgs/`."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("misuse")
    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    model.save_pretrained(folder / "model")
    with torch.no_grad():  # the other model: the same architecture and processor, other weights
        for parameter in model.parameters():
            parameter.add_(0.01)
    model.save_pretrained(folder / "other-model")
    for name in ("model", "other-model"):
        MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder / name)

    rng = np.random.default_rng(0)
    (folder / "imgs" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "sub/a.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "imgs" / name)
    (folder / "list.txt").write_text(f"{folder / 'imgs' / 'a.png'}\n")
    (folder / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    (folder / "foreign.csv").write_text("path,score\nx.jpg,1.0")  # no final newline
    (folder / "empty-folder").mkdir()
    encoded = (folder / "imgs" / "a.png").read_bytes()
    datasets.Dataset.from_dict(
        {"image": [{"bytes": encoded, "path": None}] * 3, "id": ["p-0", "p-1", "p-0"]},
        features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}),
    ).to_parquet(str(folder / "data.parquet"))
    for name, ids in (("one-null", ["p-0", None, "p-2"]), ("two-null", [None, "p-1", None])):
        datasets.Dataset.from_dict(
            {"image": [{"bytes": encoded, "path": None}] * 3, "id": ids},
            features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}),
        ).to_parquet(str(folder / f"{name}.parquet"))
    (folder / "ds2").mkdir()
    for name, column in (("a", "id"), ("b", "label")):
        datasets.Dataset.from_dict(
            {"image": [{"bytes": encoded, "path": None}], column: ["x"]},
            features=datasets.Features({"image": datasets.Image(), column: datasets.Value("string")}),
        ).to_parquet(str(folder / "ds2" / f"{name}.parquet"))
    (folder / "ds3").mkdir()  # one column name, types that do not cast into each other
    for name, ids in (("a", ["x"]), ("b", [[1, 2]])):
        pq.write_table(pa.table({"image": [encoded], "id": ids}), folder / "ds3" / f"{name}.parquet")
    (folder / "config-only").mkdir()
    (folder / "config-only" / "config.json").write_text("{}")
    (folder / "pickled").mkdir()
    shutil.copy(folder / "model" / "config.json", folder / "pickled")
    (folder / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    (folder / "exported").mkdir()
    shutil.copy(folder / "model" / "config.json", folder / "exported")
    (folder / "exported" / "model.onnx").write_bytes(b"not loaded")

    assert main([str(folder / "imgs"), "-m", str(folder / "model"), "-o", str(folder / "own.csv"), *FAST]) == 0
    return folder


@pytest.fixture
def workspace(base, tmp_path):
    folder = tmp_path / "w"
    models = ("model", "other-model")  # read only: linked, not copied
    shutil.copytree(base, folder, symlinks=True, ignore=lambda root, names: models if root == str(base) else ())
    for name in models:
        os.symlink(base / name, folder / name)
    own = folder / "own.csv"  # the copy's rows and sidecar name the copy's paths
    own.write_text(own.read_text().replace(str(base), str(folder)))
    sidecar = folder / "own.csv.mpiqe.json"
    sidecar.write_text(sidecar.read_text().replace(str(base), str(folder)))
    return folder


def _snapshot(folder):
    """Every file and link under `folder`: its content hash (or link target)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[path] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                found[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            else:
                found[path] = "folder"
    return found


HELD = []  # locks held by "another run" until the test module ends


def _hold_lock(w):
    handle = open(w / "own.csv.mpiqe.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD.append(handle)


def _symlink(w, target, name):
    os.symlink(w / target, w / name)
    return str(w / name)


def _dataset_hub_unreachable(w, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    return ["--dataset", "org/photos", "-m", str(w / "model")]


# (id, argv from the workspace (and monkeypatch), exit status, fragment of the one line on stderr)
CASES = [
    # outputs that are inputs
    (
        "output-is-input-overwrite",
        lambda w, m: [
            str(w / "imgs"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "imgs/a.jpg"),
            "-f",
            "csv",
            "--overwrite",
        ],
        2,
        "is one of the inputs",
    ),
    (
        "output-is-input-resume",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "imgs/a.jpg"), "-f", "csv", "--resume"],
        2,
        "is one of the inputs",
    ),
    (
        "output-is-input-spelled-otherwise",
        lambda w, m: [
            str(w / "imgs/a.jpg"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "imgs/sub/../a.jpg"),
            "-f",
            "jsonl",
            "--overwrite",
        ],
        2,
        "is one of the inputs",
    ),
    (
        "output-is-symlink-to-input",
        lambda w, m: [
            str(w / "imgs"),
            "-m",
            str(w / "model"),
            "-o",
            _symlink(w, "imgs/a.png", "link.csv"),
            "--overwrite",
        ],
        2,
        "is one of the inputs",
    ),
    (
        "output-is-the-path-list",
        lambda w, m: [
            "--paths-from",
            str(w / "list.txt"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "list.txt"),
            "-f",
            "csv",
            "--overwrite",
        ],
        2,
        "is one of the inputs",
    ),
    (
        "output-is-the-dataset",
        lambda w, m: [
            "--dataset",
            str(w / "data.parquet"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "data.parquet"),
            "--overwrite",
        ],
        2,
        "is one of the inputs",
    ),
    # files that are not this tool's own
    (
        "resume-foreign-csv",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "foreign.csv"), "--resume"],
        2,
        "not written by mpiqe-score",
    ),
    (
        "overwrite-foreign-csv",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "foreign.csv"), "--overwrite"],
        2,
        "not written by mpiqe-score",
    ),
    (
        "existing-output-no-flag",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "own.csv")],
        2,
        "pass --resume",
    ),
    (
        "existing-foreign-no-flag",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "foreign.csv")],
        2,
        "not written by mpiqe-score",
    ),
    # resuming with other settings
    (
        "resume-other-num-crops",
        lambda w, m: [
            str(w / "imgs"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "own.csv"),
            "--resume",
            "--num-crops",
            "1",
        ],
        2,
        "num_crops 2 there, 1 now",
    ),
    (
        "resume-other-model",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "other-model"), "-o", str(w / "own.csv"), "--resume"],
        2,
        "other settings (model",
    ),
    (
        "resume-other-dtype",
        lambda w, m: [
            str(w / "imgs"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "own.csv"),
            "--resume",
            "--dtype",
            "bfloat16",
        ],
        2,
        'dtype "float32" there, "bfloat16" now',
    ),
    (
        "resume-other-key",
        lambda w, m: [
            "--dataset",
            str(w / "data.parquet"),
            "-m",
            str(w / "model"),
            "-o",
            str(w / "own.csv"),
            "--resume",
        ],
        2,
        "key_column",
    ),
    (
        "two-runs-on-one-output",
        lambda w, m: (_hold_lock(w), [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "own.csv"), "--resume"])[
            1
        ],
        2,
        "being written by another mpiqe-score run",
    ),
    # output folders
    (
        "output-in-missing-folder",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "nowhere/s.csv")],
        2,
        "does not exist",
    ),
    (
        "output-under-a-file",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "imgs/a.jpg/s.csv")],
        2,
        "is a file, not a folder",
    ),
    (
        "output-is-a-folder",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "empty-folder")],
        2,
        "empty-folder is a folder: give a file name such as",
    ),
    (
        "output-with-a-trailing-slash",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "out") + "/"],
        2,
        "out/ is a folder: give a file name such as",
    ),
    (
        "output-unknown-extension",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", str(w / "s.txt")],
        2,
        "pass --format",
    ),
    (
        "stdout-on-a-full-disk",
        lambda w, m: (
            m.setattr("sys.stdout", open("/dev/full", "w")),  # every write fails with ENOSPC, as on a full disk
            [str(w / "imgs/a.png"), "-m", str(w / "model"), "-f", "csv"],
        )[1],
        2,
        "cannot write to standard output: No space left on device",
    ),
    (
        "parquet-to-dash",  # `-o -` is stdout, not a file named `-` in the working folder
        lambda w, m: (m.chdir(w), [str(w / "imgs"), "-m", str(w / "model"), "-o", "-", "-f", "parquet"])[1],
        2,
        "--format parquet needs --output",
    ),
    (
        "parquet-to-stdout",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-f", "parquet"],
        2,
        "--format parquet needs --output",
    ),
    (
        "maps-under-a-file",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--save-maps", str(w / "model/config.json/maps")],
        2,
        "is a file, not a folder",
    ),
    (
        "maps-into-a-dangling-link",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--save-maps", _symlink(w, "gone", "ldir1")],
        2,
        "ldir1 is a symbolic link to",
    ),
    (
        "maps-into-a-looping-link",
        lambda w, m: (
            os.symlink(w / "loop-b", w / "loop-a"),
            os.symlink(w / "loop-a", w / "loop-b"),
            [str(w / "imgs"), "-m", str(w / "model"), "--save-maps", str(w / "loop-a")],
        )[-1],
        2,
        "missing or loops back on itself",
    ),
    (
        "maps-below-a-dangling-link",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--save-maps", _symlink(w, "gone", "ldir1") + "/maps"],
        2,
        "ldir1 is a symbolic link to",
    ),
    (
        "output-below-a-dangling-link",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "-o", _symlink(w, "gone", "ldir1") + "/s.csv"],
        2,
        "ldir1 is a symbolic link to",
    ),
    (
        "maps-inside-an-input-folder",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--save-maps", str(w / "imgs/maps")],
        2,
        "is inside the input folder",
    ),
    (
        "maps-onto-an-input",
        lambda w, m: (
            Image.new("RGB", (30, 30)).save(w / "imgs/a.png.quality_map.png"),
            [
                str(w / "imgs/a.png.quality_map.png"),
                str(w / "imgs/a.png"),
                "-m",
                str(w / "model"),
                "--save-maps",
                str(w / "imgs"),
            ],
        )[1],
        2,
        "would replace",
    ),
    (
        "maps-with-onnx",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--backend", "onnx", "--save-maps", str(w / "maps")],
        2,
        "--save-maps needs --backend torch",
    ),
    # inputs
    ("missing-path", lambda w, m: [str(w / "missing.jpg"), "-m", str(w / "model")], 2, "no such file or folder"),
    (
        "empty-folder",
        lambda w, m: [str(w / "empty-folder"), "-m", str(w / "model")],
        2,
        "no image files in this folder",
    ),
    ("glob-matching-nothing", lambda w, m: [str(w / "imgs/*.webp"), "-m", str(w / "model")], 2, "matches no files"),
    (
        "dangling-symlink",
        lambda w, m: [_symlink(w, "gone.jpg", "dangling.jpg"), "-m", str(w / "model")],
        2,
        "no such file or folder",
    ),
    (
        "paths-from-missing",
        lambda w, m: ["--paths-from", str(w / "nolist.txt"), "-m", str(w / "model")],
        2,
        "nolist.txt: no such file; pass a UTF-8 text file with one image path per line",
    ),
    (
        "paths-from-binary",
        lambda w, m: ["--paths-from", str(w / "binary.txt"), "-m", str(w / "model")],
        2,
        "binary.txt, line 1: the byte 0xff is not UTF-8; pass a UTF-8 text file",
    ),
    (
        "paths-from-latin-1-on-line-2",
        lambda w, m: (
            (w / "latin.txt").write_bytes(f"{w / 'imgs/a.png'}\n{w / 'imgs'}/\xe9t\xe9.jpg\n".encode("latin-1")),
            ["--paths-from", str(w / "latin.txt"), "-m", str(w / "model")],
        )[1],
        2,
        "latin.txt, line 2: the byte 0xe9 is not UTF-8",
    ),
    (
        "paths-from-a-folder",
        lambda w, m: ["--paths-from", str(w / "imgs"), "-m", str(w / "model")],
        2,
        "is a folder; pass a UTF-8 text file with one image path per line, or give the folder itself",
    ),
    (
        "paths-from-only-comments",
        lambda w, m: (
            (w / "comments.txt").write_text("# photos to score\n\n   \n  # none yet\n"),
            ["--paths-from", str(w / "comments.txt"), "-m", str(w / "model")],
        )[1],
        2,
        "no image files to score",
    ),
    (
        "dataset-repeated-id",
        lambda w, m: ["--dataset", str(w / "data.parquet"), "--id-column", "id", "-m", str(w / "model")],
        2,
        "the id 'p-0' is on rows 0, 2",
    ),
    (
        "dataset-one-null-id",
        lambda w, m: [
            "--dataset",
            str(w / "one-null.parquet"),
            "--id-column",
            "id",
            "-m",
            str(w / "model"),
        ],
        2,
        "row(s) 1 of",
    ),
    (
        "dataset-two-null-ids",
        lambda w, m: [
            "--dataset",
            str(w / "two-null.parquet"),
            "--id-column",
            "id",
            "-m",
            str(w / "model"),
        ],
        2,
        "row(s) 0, 2 of",
    ),
    (
        "dataset-glob-matches-the-output-to-be",
        lambda w, m: ["--dataset", str(w / "*.parquet"), "-m", str(w / "model"), "-o", str(w / "c.parquet")],
        2,
        "parquet matches --output",
    ),
    (
        "dataset-glob-matches-the-output-resume",
        lambda w, m: (
            shutil.copy(w / "data.parquet", w / "ds2" / "c.parquet"),  # as left by a first run, but still data
            [
                "--dataset",
                str(w / "ds2/*.parquet"),
                "-m",
                str(w / "model"),
                "-o",
                str(w / "ds2/c.parquet"),
                "--resume",
            ],
        )[1],
        2,
        "parquet matches --output",
    ),
    (
        "dataset-glob-over-other-columns",
        lambda w, m: ["--dataset", str(w / "ds2/*.parquet"), "-m", str(w / "model")],
        2,
        "do not share their columns (a.parquet: image, id; b.parquet: image, label); pass files of one schema",
    ),
    (
        "dataset-glob-over-other-column-types",
        lambda w, m: ["--dataset", str(w / "ds3/*.parquet"), "-m", str(w / "model")],
        2,
        "its Parquet files cannot be read as one dataset (Couldn't cast",
    ),
    (
        "dataset-missing-column",
        lambda w, m: ["--dataset", str(w / "data.parquet"), "--image-column", "img", "-m", str(w / "model")],
        2,
        "'img' is not a column",
    ),
    (
        "dataset-missing-parquet",
        lambda w, m: ["--dataset", str(w / "none.parquet"), "-m", str(w / "model")],
        2,
        "no such Parquet file",
    ),
    ("dataset-hub-unreachable", _dataset_hub_unreachable, 2, "cannot be reached"),
    (
        "dataset-with-paths",
        lambda w, m: [str(w / "imgs"), "--dataset", str(w / "data.parquet"), "-m", str(w / "model")],
        2,
        "cannot be combined",
    ),
    # models and devices
    ("model-missing", lambda w, m: [str(w / "imgs"), "-m", str(w / "no-model")], 2, "no such folder"),
    ("model-without-type", lambda w, m: [str(w / "imgs"), "-m", str(w / "config-only")], 2, "names no model_type"),
    ("model-pickled", lambda w, m: [str(w / "imgs"), "-m", str(w / "pickled")], 2, "--allow-pickle"),
    ("model-onnx-export-with-torch", lambda w, m: [str(w / "imgs"), "-m", str(w / "exported")], 2, "--backend onnx"),
    (
        "device-nonsense",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--device", "gpu7"],
        2,
        "not a torch device",
    ),
    (
        "device-meta",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--device", "meta"],
        2,
        "--device meta: cannot score on it",
    ),
    (
        "num-crops-zero",
        lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--num-crops", "0"],
        2,
        "--num-crops must be at least 1",
    ),
    ("resume-without-output", lambda w, m: [str(w / "imgs"), "-m", str(w / "model"), "--resume"], 2, "need --output"),
]


@pytest.mark.parametrize("case, argv_of, status, fragment", CASES, ids=[case[0] for case in CASES])
def test_misuse_is_one_line_with_its_status_and_changes_no_file(
    case, argv_of, status, fragment, workspace, capsys, monkeypatch
):
    argv = [*FAST, *argv_of(workspace, monkeypatch)]  # the case's own options win
    before = _snapshot(workspace)
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    while HELD:
        HELD.pop().close()
    err = capsys.readouterr().err
    assert code == status, err
    assert fragment in err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    assert _snapshot(workspace) == before  # no input, earlier output or foreign file touched; nothing left behind


def test_imgs_dot_imgs_and_the_absolute_path_resume_each_other(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    decoded = []
    original = cli_scoring.TorchScorer.score_batch

    def counted(self, pixel_values):
        decoded.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(cli_scoring.TorchScorer, "score_batch", counted)
    rows_before = (workspace / "own.csv").read_text()
    for spelling in ("imgs/", "./imgs", str(workspace / "imgs")):
        assert main([spelling, "-m", "model", "-o", "own.csv", "--resume", *FAST]) == 0
        assert "3 kept from before" in capsys.readouterr().err
    assert decoded == [] and (workspace / "own.csv").read_text() == rows_before


def test_map_names_keep_the_extension_and_the_sub_folder():
    keys = ["/p/imgs/a.jpg", "/p/imgs/a.png", "/p/imgs/sub/a.jpg"]
    assert map_paths("maps", keys, from_files=True) == {
        key: (f"maps/{name}.quality_map.png", f"maps/{name}.distortion_map.png")
        for key, name in zip(keys, ["a.jpg", "a.png", "sub/a.jpg"])
    }
    ids = map_paths("maps", ["x/y", "x_y", 7], from_files=False)
    assert [quality for quality, _ in ids.values()] == [
        "maps/x%2Fy.quality_map.png",
        "maps/x_y.quality_map.png",
        "maps/7.quality_map.png",
    ]


def test_the_sidecar_names_the_tool_the_model_and_the_settings(workspace):
    record = json.loads((workspace / "own.csv.mpiqe.json").read_text())
    settings = record["settings"]
    assert record["tool"] == "mpiqe-score"
    assert settings["model"] == str(workspace / "model") and settings["num_crops"] == 2
    assert settings["dtype"] == "float32" and settings["backend"] == "torch" and settings["format"] == "csv"
    assert settings["processor"]["crop_size"] == {"height": 30, "width": 30} and len(settings["weights_sha256"]) == 64
    assert not (workspace / "own.csv.mpiqe.lock").exists()  # released at the end of the run


def test_an_empty_foreign_file_may_be_overwritten(workspace, capsys):
    (workspace / "empty.csv").write_text("")
    target = str(workspace / "empty.csv")
    assert main([str(workspace / "imgs"), "-m", str(workspace / "model"), "-o", target, "--overwrite", *FAST]) == 0
    assert (workspace / "empty.csv").read_text().count("\n") == 4


def test_ctrl_c_and_bugs_before_scoring_are_one_line(workspace, capsys, monkeypatch):
    argv = [str(workspace / "imgs"), "-m", str(workspace / "model"), "-o", str(workspace / "new.csv"), *FAST]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mpiqe_hf.cli.command._Run._inputs", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == "mpiqe-score: interrupted before any row was written\n"

    def broken(*args, **kwargs):
        raise AttributeError("a bug")

    monkeypatch.setattr("mpiqe_hf.cli.command._Run._inputs", broken)
    assert main(argv) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("mpiqe-score: this is a bug") and "report" in err
    assert not os.listdir(workspace) or not (workspace / "new.csv").exists()


def test_a_write_that_fails_mid_run_is_one_line_and_keeps_the_rows(workspace, capsys, monkeypatch):
    written = []
    original = cli_writers.RowWriter.write

    def full_disk_after_one_batch(self, rows):
        if written:
            raise OSError(28, "No space left on device")
        written.append(rows)
        original(self, rows)

    monkeypatch.setattr(cli_writers.RowWriter, "write", full_disk_after_one_batch)
    target = workspace / "new.jsonl"
    code = main([str(workspace / "imgs"), "-m", str(workspace / "model"), "-o", str(target), "-b", "1", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("mpiqe-score: cannot write") and "No space left on device" in err
    assert "--resume" in err and len(target.read_text().splitlines()) == 1


def test_decompression_bomb_warnings_stay_out_of_the_output(workspace, capsys, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # the 40 x 50 photos warn, still under twice the limit
    assert main([str(workspace / "imgs/a.png"), "-m", str(workspace / "model"), "-f", "jsonl", *FAST]) == 0
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBomb" not in capsys.readouterr().err


def test_output_dash_is_standard_output(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    before = _snapshot(workspace)
    assert main([str(workspace / "imgs/a.png"), "-m", "model", "-o", "-", "-f", "jsonl", *FAST]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == [str(workspace / "imgs/a.png")] and rows[0]["status"] == "ok"
    assert _snapshot(workspace) == before  # no file named `-`
