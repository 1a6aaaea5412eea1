"""Scoring with an exported graph through onnxruntime: [`OnnxQualityScorer`]."""

from __future__ import annotations

import os

import numpy as np

from .exporter import _INPUT_NAME, ONNX_FILE, QUANTIZED_ONNX_FILE, _require


class OnnxQualityScorer:
    """
    Scores images with an exported graph through onnxruntime, answering like the `image-quality-assessment`
    pipeline (`{"score", "quality", "scene", "distortion", "normalized_score"}` per image); it is also the `onnx`
    scoring backend of `mpiqe-score` ([`score_batch`]).

    Args:
        export_dir (`str` or `os.PathLike`): a folder written by [`export_onnx`].
        quantized (`bool`): use `model_int8.onnx` instead of `model.onnx`.
        num_threads (`int`, *optional*): onnxruntime's intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, export_dir, quantized: bool = False, num_threads: int | None = None):
        onnxruntime = _require("onnxruntime")
        from ..configuration_mpiqe import MPIQEConfig
        from ..image_processing_mpiqe import MPIQEImageProcessor

        path = os.path.join(export_dir, QUANTIZED_ONNX_FILE if quantized else ONNX_FILE)
        if not os.path.isfile(path):
            how = "mpiqe-export onnx --quantize" if quantized else "mpiqe-export onnx"
            raise OSError(f"{export_dir} holds no {os.path.basename(path)}: export it with `{how}`.")
        self.config = MPIQEConfig.from_pretrained(export_dir)
        self.image_processor = MPIQEImageProcessor.from_pretrained(export_dir)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about graph optimisation are not the user's
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for crops `(batch_size, num_crops, 3, crop_size, crop_size)`, by name."""
        values = self.session.run(None, {_INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})
        return dict(zip(self.output_names, values))

    def score_batch(self, pixel_values):
        """The [`ScoreBatch`] of crops `(batch_size, num_crops, 3, crop_size, crop_size)` (numpy or a CPU tensor)."""
        from ..score_batch import ScoreBatch

        outputs = self.run(pixel_values)
        return ScoreBatch(
            score=outputs["native_score"],
            normalized_score=outputs["score"],
            scene_logits=outputs.get("scene_logits"),
            distortion_logits=outputs.get("distortion_logits"),
        )

    def __call__(self, images, num_crops: int | None = None, batch_size: int | None = None, **ignored) -> list[dict]:
        """Scores a list of images (anything the image processor reads); `batch_size` images per run."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        batch_size = batch_size or len(images) or 1
        results = []
        for start in range(0, len(images), batch_size):
            batch = self.image_processor(images[start : start + batch_size], num_crops=num_crops)
            results += self.score_batch(batch["pixel_values"]).results(self.config)
        return results[0] if single else results
