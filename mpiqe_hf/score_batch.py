"""The scores of a batch of images, whatever runtime computed them (torch in `mpiqe-score`, onnxruntime in
`mpiqe_hf.export_onnx.OnnxQualityScorer`), and each image's result dict from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pipeline_mpiqe import quality_result


@dataclass
class ScoreBatch:
    """Scores of a batch, as float32 numpy arrays."""

    score: np.ndarray  # (batch_size,): on the training dataset's MOS scale
    normalized_score: np.ndarray  # (batch_size,): the model's [0, 1] score
    scene_logits: np.ndarray | None  # (batch_size, num_scene_classes), None without scene prompts
    distortion_logits: np.ndarray | None  # (batch_size, num_distortion_classes), None without distortion prompts

    def results(self, config) -> list[dict]:
        """Each image's `{"score", "quality", "scene", "distortion", "normalized_score"}` (see `quality_result`)."""
        return [
            quality_result(
                config,
                self.normalized_score[index],
                self.score[index],
                None if self.scene_logits is None else self.scene_logits[index],
                None if self.distortion_logits is None else self.distortion_logits[index],
            )
            for index in range(len(self.score))
        ]


__all__ = ["ScoreBatch"]
