"""ONNX export of MP-IQE scoring, and scoring through onnxruntime.

    mpiqe-export onnx --model org/mp-iqe-koniq exported/ [--quantize] [--opset 17]
    mpiqe-score photos/ --model exported/ --backend onnx

The exported graph takes `pixel_values` `(batch_size, num_crops, 3, crop_size, crop_size)` (both leading axes
dynamic) and returns `score` (normalised, `(batch_size,)`), `native_score` (the model's MOS scale) and, where the
model has those prompts, `scene_logits` and `distortion_logits`. The text features depend only on the learned
prompts, so they are computed once and stored in the graph as constants: the text encoder is not exported.
The export folder also holds the model's `config.json` (class names, quality levels) and `preprocessor_config.json`.
`--quantize` adds `model_int8.onnx`, onnxruntime's dynamic int8 quantisation of the weights of the matrix products.
"""

from .exporter import ONNX_FILE, QUANTIZED_ONNX_FILE, SUPPORTED_OPSETS, check_opset, export_onnx, quantize_onnx
from .runtime import OnnxQualityScorer


__all__ = [
    "export_onnx",
    "quantize_onnx",
    "check_opset",
    "OnnxQualityScorer",
    "ONNX_FILE",
    "QUANTIZED_ONNX_FILE",
    "SUPPORTED_OPSETS",
]
