"""ONNX export (`mpiqe-export onnx`) and scoring through onnxruntime."""

import numpy as np
import pytest
import torch
from PIL import Image


pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from mpiqe_hf import MPIQEImageProcessor  # noqa: E402
from mpiqe_hf.cli.export import main  # noqa: E402
from mpiqe_hf.export_onnx import OnnxQualityScorer  # noqa: E402
from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline  # noqa: E402


def _varied_images(count=5):
    rng = np.random.default_rng(3)
    images = []
    for index in range(count):
        height, width = 30 + 7 * index, 60 - 5 * index
        smooth = np.kron(rng.random((3, 3, 3)), np.ones((height // 3 + 1, width // 3 + 1, 1)))[:height, :width]
        noisy = smooth + rng.normal(0, 0.1 * index, (height, width, 3))
        images.append(Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)))
    return images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import MPIQEModelTester

    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    folder = tmp_path_factory.mktemp("onnx")
    model.save_pretrained(folder / "model")
    MPIQEImageProcessor(crop_size=30, num_crops=4).save_pretrained(folder / "model")
    assert main(["onnx", str(folder / "export"), "--model", str(folder / "model"), "--quantize"]) == 0
    return model, folder / "export"


def test_onnxruntime_scores_match_torch(exported):
    model, export_dir = exported
    images = _varied_images()
    pipe = ImageQualityAssessmentPipeline(model=model, image_processor=MPIQEImageProcessor.from_pretrained(export_dir))
    expected = pipe(images, return_normalized_score=True)
    scorer = OnnxQualityScorer(export_dir)
    # batches of 3 and 2: another batch size than the export's example, and another number of crops
    got = scorer(images, batch_size=3)
    for mine, theirs in zip(got, expected):
        assert abs(mine["normalized_score"] - theirs["normalized_score"]) < 1e-4
        assert abs(mine["score"] - theirs["score"]) < 1e-4 * 4  # native scale 1-5
        assert mine["quality"] == theirs["quality"]
    crops = scorer.image_processor(images[:2], num_crops=6)["pixel_values"]
    with torch.no_grad():
        reference = model(torch.from_numpy(crops))
    outputs = scorer.run(crops)
    np.testing.assert_allclose(outputs["score"], reference.score.numpy(), atol=1e-4)
    # (the tiny model's stand-in class tokens make some prompts identical: compare logits, not tied argmaxes)
    np.testing.assert_allclose(outputs["scene_logits"], reference.scene_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["distortion_logits"], reference.distortion_logits.numpy(), atol=1e-4)


def test_text_encoder_is_folded_into_constants(exported):
    _, export_dir = exported
    graph = onnx.load(str(export_dir / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["pixel_values"]
    assert [o.name for o in graph.output] == ["score", "native_score", "scene_logits", "distortion_logits"]
    names = [initializer.name for initializer in graph.initializer]
    assert any("vision_model" in name for name in names)
    assert not any("text_model" in name or "prompt_learner" in name for name in names)
    batch, crops = graph.input[0].type.tensor_type.shape.dim[:2]
    assert (batch.dim_param, crops.dim_param) == ("batch_size", "num_crops")


def test_int8_graph_scores_close_to_fp32(exported):
    _, export_dir = exported
    images = _varied_images()
    fp32 = [result["normalized_score"] for result in OnnxQualityScorer(export_dir)(images)]
    int8 = [result["normalized_score"] for result in OnnxQualityScorer(export_dir, quantized=True)(images)]
    assert int8 != fp32  # really another graph
    assert np.abs(np.array(int8) - np.array(fp32)).max() < 0.5 * np.ptp(fp32) + 0.05
    ops = {node.op_type for node in onnx.load(str(export_dir / "model_int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops


def test_export_errors_are_reported(tmp_path, capsys):
    assert main(["onnx", str(tmp_path / "out"), "--model", str(tmp_path / "missing")]) == 2
    assert "missing': no such folder" in capsys.readouterr().err
    with pytest.raises(OSError, match="mpiqe-export onnx"):
        OnnxQualityScorer(tmp_path)


def test_export_when_the_windows_do_not_divide_the_patch_grid(tmp_path):
    """ViT-B/16 has 14 x 14 patches and 4 x 4 windows: adaptive pooling that ONNX exporters cannot express."""
    from conftest import MPIQEModelTester

    from mpiqe_hf.export_onnx import export_onnx

    model = MPIQEModelTester().model(window_size=4)  # 15 x 15 patches
    result = export_onnx(model, tmp_path, image_processor=MPIQEImageProcessor(crop_size=30, num_crops=2))
    assert result["max_abs_diff"] < 1e-4
    crops = MPIQEModelTester().pixel_values(seed=8, batch_size=3, num_crops=2)
    with torch.no_grad():
        expected = model(crops).distortion_logits.numpy()
    np.testing.assert_allclose(
        OnnxQualityScorer(tmp_path).run(crops.numpy())["distortion_logits"], expected, atol=1e-4
    )
