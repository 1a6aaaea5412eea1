"""`mpiqe-score --compile`: torch.compile gives the eager scores, compiling once per run. One real compile per dtype of
the smallest MP-IQE (one vision layer): each costs tens of seconds with inductor's cache cold."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor
from mpiqe_hf.cli import main
from mpiqe_hf.cli import scoring as cli_scoring


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("compile-model")
    MPIQEModelTester(vision_layers=1, text_layers=1).model(mos_min=1.0, mos_max=5.0).save_pretrained(folder)
    MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile-images")
    rng = np.random.default_rng(2)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (34 + index, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(folder)


def _scores(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return {row["path"]: row for row in map(json.loads, out.splitlines())}


def test_compile_gives_the_eager_scores_compiling_once_per_run(capsys, checkpoint, images, monkeypatch):
    compiled_shapes = []
    real_compile = torch.compile

    def recording_compile(function, **options):
        compiled = real_compile(function, **options)

        def call(pixel_values):
            compiled_shapes.append(tuple(pixel_values.shape))
            return compiled(pixel_values)

        return call

    monkeypatch.setattr(cli_scoring.torch, "compile", recording_compile)
    # 5 images in batches of 3: the last batch (2 images) is padded to 3 instead of compiling again
    common = [images, "-m", checkpoint, "-f", "jsonl", "-b", "3", "--num-workers", "0"]
    # float32: the project's 1e-5; bfloat16: 1 % of the score, about one bfloat16 step (2^-7), since inductor
    # fuses and rounds bfloat16 intermediates differently from eager
    for dtype, tolerance in (("float32", dict(abs=1e-5)), ("bfloat16", dict(rel=1e-2))):
        eager = _scores(capsys, [*common, "--dtype", dtype])
        compiled_shapes.clear()
        compiled = _scores(capsys, [*common, "--dtype", dtype, "--compile"])
        assert compiled_shapes == [(3, 2, 3, 30, 30)] * 2
        assert list(compiled) == list(eager)
        for path, row in compiled.items():
            for column in ("score", "normalized_score"):
                assert row[column] == pytest.approx(eager[path][column], **tolerance), (dtype, column)
            assert row["quality"] == eager[path]["quality"] and row["scene"] == eager[path]["scene"]


def test_compile_errors_are_one_line_and_exit_2(capsys, checkpoint, images, monkeypatch):
    code = main([images, "-m", checkpoint, "--backend", "onnx", "--compile"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--compile" in err and "--backend onnx" in err

    def no_compiler(function, **options):  # what inductor raises where it finds no C++ compiler
        def call(pixel_values):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1 ...")

        return call

    monkeypatch.setattr(cli_scoring.torch, "compile", no_compiler)
    code = main([images, "-m", checkpoint, "-f", "jsonl", "--compile", "--num-workers", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "mpiqe-score: --compile: torch.compile failed: InvalidCxxCompiler: No working C++ compiler found; score "
        "without --compile"
    )
