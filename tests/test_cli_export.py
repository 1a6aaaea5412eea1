"""`mpiqe-score --backend onnx` on an `mpiqe-export onnx` folder, and `mpiqe-score --save-maps`."""

import csv
import os

import numpy as np
import pytest
from PIL import Image


pytest.importorskip("onnxruntime")

from mpiqe_hf import MPIQEImageProcessor  # noqa: E402
from mpiqe_hf.cli import main as score_main  # noqa: E402
from mpiqe_hf.cli.export import main as export_main  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("cli-export")
    MPIQEModelTester().model(mos_min=1.0, mos_max=5.0).save_pretrained(folder / "model")
    MPIQEImageProcessor(crop_size=30, num_crops=3).save_pretrained(folder / "model")
    rng = np.random.default_rng(4)
    (folder / "photos" / "sub").mkdir(parents=True)
    for name, size in (("a.png", (40, 52)), ("sub/b.png", (64, 30)), ("c.png", (30, 30))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "photos" / name)
    return folder


def _rows(path):
    with open(path, newline="") as file:
        return {row["path"]: row for row in csv.DictReader(file)}


def test_onnx_backend_scores_like_torch(checkpoint, tmp_path):
    assert export_main(["onnx", str(tmp_path / "exported"), "--model", str(checkpoint / "model")]) == 0
    common = [str(checkpoint / "photos"), "--dtype", "float32", "--num-workers", "0", "-b", "2"]
    assert score_main([*common, "--model", str(checkpoint / "model"), "-o", str(tmp_path / "torch.csv")]) == 0
    assert (
        score_main(
            [*common, "--model", str(tmp_path / "exported"), "--backend", "onnx", "-o", str(tmp_path / "onnx.csv")]
        )
        == 0
    )
    torch_rows, onnx_rows = _rows(tmp_path / "torch.csv"), _rows(tmp_path / "onnx.csv")
    assert len(onnx_rows) == 3 and onnx_rows.keys() == torch_rows.keys()
    for path, row in onnx_rows.items():
        assert abs(float(row["normalized_score"]) - float(torch_rows[path]["normalized_score"])) < 1e-4
        assert abs(float(row["score"]) - float(torch_rows[path]["score"])) < 4e-4
        assert row["quality"] == torch_rows[path]["quality"] and row["status"] == "ok"


def test_onnx_backend_needs_an_export(checkpoint, capsys):
    status = score_main([str(checkpoint / "photos"), "--model", str(checkpoint / "model"), "--backend", "onnx"])
    assert status == 2 and "mpiqe-export onnx" in capsys.readouterr().err


def test_onnx_int8_backend_scores_with_the_quantised_graph(checkpoint, tmp_path, capsys):
    from mpiqe_hf.export_onnx import OnnxQualityScorer

    exported = tmp_path / "exported"
    assert export_main(["onnx", str(exported), "--model", str(checkpoint / "model")]) == 0
    common = [str(checkpoint / "photos"), "--model", str(exported), "--num-workers", "0", "-b", "2"]
    assert score_main([*common, "--backend", "onnx-int8", "-o", str(tmp_path / "no.csv")]) == 2
    assert "holds no model_int8.onnx: export it with `mpiqe-export onnx --quantize`" in capsys.readouterr().err
    assert export_main(["onnx", str(exported), "--model", str(checkpoint / "model"), "--quantize"]) == 0
    # one image a batch: dynamic quantisation scales activations over the whole batch, so batch-mates move a score
    assert score_main([*common, "-b", "1", "--backend", "onnx-int8", "-o", str(tmp_path / "int8.csv")]) == 0
    rows = _rows(tmp_path / "int8.csv")
    quantized = OnnxQualityScorer(str(exported), quantized=True)
    for path, row in rows.items():
        crops = quantized.image_processor(Image.open(path), return_tensors="np")["pixel_values"]
        expected = quantized.score_batch(crops).results(quantized.config)[0]
        assert float(row["score"]) == pytest.approx(expected["score"], abs=1e-5)


def test_save_maps_writes_an_overlay_per_image(checkpoint, tmp_path):
    from mpiqe_hf import MPIQEModel

    maps = tmp_path / "maps"
    status = score_main(
        [
            str(checkpoint / "photos"),
            "--model",
            str(checkpoint / "model"),
            "--dtype",
            "float32",
            "--num-workers",
            "0",
            "--save-maps",
            str(maps),
            "-o",
            str(tmp_path / "s.csv"),
        ]
    )
    assert status == 0
    names = sorted(
        os.path.relpath(os.path.join(root, name), maps) for root, _, files in os.walk(maps) for name in files
    )
    # Grad-CAM and distortion windows for each image, named after its path below photos/, extension kept
    assert names == [
        f"{path}.{kind}_map.png" for path in ("a.png", "c.png", "sub/b.png") for kind in ("distortion", "quality")
    ]
    model = MPIQEModel.from_pretrained(checkpoint / "model")
    processor = MPIQEImageProcessor.from_pretrained(checkpoint / "model")
    image = Image.open(checkpoint / "photos" / "a.png").convert("RGB")  # 3 crops of 30 leave part of 40 x 52 out
    from mpiqe_hf.image_processing_mpiqe import covering_num_crops
    from mpiqe_hf.visualization import render_overlay

    crop = processor.crop_size
    covering = covering_num_crops(40, 52, crop["height"], crop["width"], processor.max_image_size)
    expected = model.quality_map(processor(image, num_crops=covering, return_tensors="pt")["pixel_values"], [(40, 52)])
    assert covering > 3 and expected.coverage == [1.0]  # the map shows the whole image, not only the score's crops
    scored = model(processor(image, return_tensors="pt")["pixel_values"])

    overlay = np.asarray(Image.open(maps / "a.png.quality_map.png").convert("RGB"), dtype=int)
    score = float(_rows(tmp_path / "s.csv")[str(checkpoint / "photos" / "a.png")]["score"])
    reference = np.asarray(render_overlay(image, expected.gradcam_maps[0], title=None), dtype=int)
    assert overlay.shape[1] == reference.shape[1]  # same layout: the image, then the colour bar
    assert np.abs(overlay[-reference.shape[0] :] - reference).mean() < 2  # maps agree (the title row differs)
    assert score == pytest.approx(float(scored.score[0] * 4 + 1), abs=1e-4)


def test_save_maps_refuses_the_onnx_backend(checkpoint, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        score_main(
            [
                str(checkpoint / "photos"),
                "--model",
                str(tmp_path),
                "--backend",
                "onnx",
                "--save-maps",
                str(tmp_path / "maps"),
            ]
        )
    assert exit_info.value.code == 2
