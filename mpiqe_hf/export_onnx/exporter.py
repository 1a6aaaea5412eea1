"""ONNX export of MP-IQE scoring ([`export_onnx`]) and onnxruntime's dynamic int8 quantisation ([`quantize_onnx`])."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch
from torch import nn


ONNX_FILE = "model.onnx"
QUANTIZED_ONNX_FILE = "model_int8.onnx"
# Every file an export writes: a folder holding others is not an export folder, and those are not the export's to
# replace.
EXPORT_FILES = frozenset(
    [ONNX_FILE, QUANTIZED_ONNX_FILE, "config.json", "preprocessor_config.json"]
    # The configs' remote code: save_pretrained copies the package's modules they import.
    + [name for name in os.listdir(os.path.dirname(os.path.dirname(__file__))) if name.endswith(".py")]
)
_INPUT_NAME = "pixel_values"
# The opsets an export is tested with: from 14, the first that has the attention's scaled_dot_product_attention, to
# 20, the newest of the TorchScript exporter of torch 2.4 (the oldest torch the package supports); torch.onnx names
# its own limits in private constants only.
SUPPORTED_OPSETS = range(14, 21)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(f"ONNX export and scoring need `{module}`: pip install 'mpiqe_hf[onnx]'.") from err


class _ScoringGraph(nn.Module):
    """What is exported: the model's scoring forward with the text features given as fixed tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.text_features = model.get_text_features()

    def forward(self, pixel_values):
        outputs = self.model(pixel_values=pixel_values, text_features=self.text_features)
        results = [outputs.score, self.model.to_native_scale(outputs.score)]
        results += [logits for logits in (outputs.scene_logits, outputs.distortion_logits) if logits is not None]
        return tuple(results)


def _output_names(config) -> list[str]:
    names = ["score", "native_score"]
    if config.use_scene_prompts:
        names.append("scene_logits")
    if config.use_distortion_prompts:
        names.append("distortion_logits")
    return names


def foreign_files(output_dir) -> list[str]:
    """The entries of `output_dir` (sorted) that an export does not write; [] where the folder does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if name not in EXPORT_FILES)


def check_opset(opset: int):
    """Raises `ValueError` for an opset outside [`SUPPORTED_OPSETS`], before anything is written: torch's exporter
    would fail only after tracing the model, with its graph in the message."""
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"--opset {opset}: the export supports opsets {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}; "
            "leave --opset out for 17."
        )


def export_onnx(model, output_dir, image_processor=None, opset: int = 17, quantize: bool = False) -> dict:
    """
    Exports `model`'s scoring to `output_dir/model.onnx` with `torch.onnx.export`, next to its `config.json` and
    the image processor's `preprocessor_config.json`; checks onnxruntime against torch on random crops.

    Args:
        model ([`MPIQEModel`]): the model; exported in float32, in eval mode.
        output_dir (`str` or `os.PathLike`): the export folder (created).
        image_processor ([`MPIQEImageProcessor`], *optional*): saved with the graph; defaults to one with the CLIP
            image size as crop size.
        opset (`int`): ONNX opset of the TorchScript-based exporter, in [`SUPPORTED_OPSETS`] (14 to 20).
        quantize (`bool`): also write `model_int8.onnx` (see [`quantize_onnx`]); without it, the
            `model_int8.onnx` of an earlier export into `output_dir` is deleted, so that the folder holds only this
            model's files.

    Returns:
        `{"onnx": path, "max_abs_diff": float}` (+ `"onnx_int8"` with `quantize=True`): `max_abs_diff` is the largest
        difference of the normalised scores of onnxruntime and torch on two random images.
    """
    check_opset(opset)
    onnxruntime = _require("onnxruntime")
    _require("onnx")
    from ..image_processing_mpiqe import MPIQEImageProcessor

    os.makedirs(output_dir, exist_ok=True)
    crop_size = model.config.clip_config.vision_config.image_size
    if image_processor is None:
        image_processor = MPIQEImageProcessor.default_for(model.config)
    if model.dtype != torch.float32:
        model = copy.deepcopy(model).float()
    model.eval()
    example = torch.randn(2, 2, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(0))
    path = os.path.join(output_dir, ONNX_FILE)
    output_names = _output_names(model.config)
    # The text features are computed outside the trace: the graph holds them as constants.
    graph = _ScoringGraph(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            path,
            input_names=[_INPUT_NAME],
            output_names=output_names,
            dynamic_axes={
                _INPUT_NAME: {0: "batch_size", 1: "num_crops"},
                **{name: {0: "batch_size"} for name in output_names},
            },
            opset_version=opset,
            dynamo=False,
        )
        expected = graph(example)[0].numpy()
    model.config.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {_INPUT_NAME: example.numpy()})
    result = {"onnx": path, "max_abs_diff": float(np.abs(scores - expected).max())}
    quantized = os.path.join(output_dir, QUANTIZED_ONNX_FILE)
    if quantize:
        result["onnx_int8"] = quantize_onnx(path, quantized)
    elif os.path.exists(quantized):
        os.remove(quantized)
    return result


def quantize_onnx(model_path, output_path) -> str:
    """onnxruntime's dynamic quantisation: int8 weights of the matrix products, activations quantised at run time."""
    _require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(os.fspath(model_path), os.fspath(output_path), weight_type=QuantType.QInt8)
    return os.fspath(output_path)
