"""`mpiqe-score` run in-process on a tiny model and a folder of awkward images."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel, load_image
from mpiqe_hf.cli import collect_files, main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("cli-model")
    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    model.save_pretrained(folder)
    MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder)
    return folder


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


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_scores_valid_files_and_names_the_corrupt_one(capsys, tiny_checkpoint, image_folder):
    code, out, err = _run(capsys, [str(image_folder), "--model", str(tiny_checkpoint), "--format", "jsonl",
                                   "--batch-size", "3", "--no-progress"])
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert {row["path"].split("/")[-1] for row in rows} == VALID
    assert "corrupt.jpg" in err and str(image_folder / "corrupt.jpg") in err
    assert "notes.txt" not in out + err
    for row in rows:
        assert set(row) == {"path", "score", "quality", "scene", "distortion", "normalized_score"}
        assert row["score"] == pytest.approx(1.0 + 4.0 * row["normalized_score"], abs=1e-5)
        assert row["quality"] in ("bad", "poor", "fair", "good", "excellent")

    # the same scores as the model itself, and the batch size does not change them
    model = MPIQEModel.from_pretrained(tiny_checkpoint)
    processor = MPIQEImageProcessor.from_pretrained(tiny_checkpoint)
    for row in rows:
        pixel_values = processor(load_image(row["path"]), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = float(model.to_native_scale(model(pixel_values).score)[0])
        assert row["score"] == pytest.approx(expected, abs=1e-5)
    code, out_one, _ = _run(capsys, [str(image_folder), "-m", str(tiny_checkpoint), "-f", "jsonl", "-b", "1"])
    assert [json.loads(line)["score"] for line in out_one.splitlines()] == pytest.approx([r["score"] for r in rows], abs=1e-5)


def test_csv_output_file_glob_and_no_recursive(capsys, tiny_checkpoint, image_folder, tmp_path):
    target = tmp_path / "scores.csv"
    code, out, err = _run(capsys, [str(image_folder / "*.png"), "--model", str(tiny_checkpoint), "--format", "csv",
                                   "--output", str(target), "--num-crops", "1", "--device", "cpu"])
    assert code == 0, err
    assert out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {row["path"].split("/")[-1] for row in rows} == {"gray.png", "rgba.png", "deep16.png"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mpiqe-score-")]

    code, out, err = _run(capsys, [str(image_folder), "--no-recursive", "-m", str(tiny_checkpoint)])
    assert code == 1  # the corrupt file
    assert "photo.jpg" not in out and "gray.png" in out and out.splitlines()[0].split()[:3] == ["path", "score", "quality"]


def test_nothing_is_written_when_scoring_breaks(capsys, tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("previous results\n")
    import mpiqe_hf.pipeline_mpiqe as pipeline_module

    def explode(self, model_inputs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module.ImageQualityAssessmentPipeline, "_forward", explode)
    code, _, err = _run(capsys, [str(image_folder), "-m", str(tiny_checkpoint), "-o", str(target), "-f", "jsonl"])
    assert code == 130 and "nothing was written" in err
    assert target.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_usage_errors(capsys, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), "--model", str(tiny_checkpoint), "--batch-size", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path)])  # no --model
    assert info.value.code == 2
    code, _, err = _run(capsys, [str(tmp_path / "missing.png"), "--model", str(tiny_checkpoint)])
    assert code == 2 and "missing.png" in err and "no such file" in err
    Image.new("RGB", (30, 30)).save(tmp_path / "ok.png")
    code, _, err = _run(capsys, [str(tmp_path / "ok.png"), "--model", str(tmp_path / "no-model-here")])
    assert code == 2 and "cannot load the model" in err


def test_collect_files_order_and_duplicates(image_folder):
    files, problems = collect_files([str(image_folder), str(image_folder / "gray.png"), str(image_folder / "x*.bmp")])
    assert len(set(files)) == len(files) == 5  # four valid + the corrupt .jpg, the explicit duplicate dropped
    assert files == sorted(files)
    assert problems == [(str(image_folder / "x*.bmp"), "the pattern matches no files")]
