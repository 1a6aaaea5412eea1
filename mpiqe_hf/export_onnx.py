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

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn


__all__ = ["export_onnx", "quantize_onnx", "OnnxQualityScorer", "ONNX_FILE", "QUANTIZED_ONNX_FILE", "main"]

ONNX_FILE = "model.onnx"
QUANTIZED_ONNX_FILE = "model_int8.onnx"
_INPUT_NAME = "pixel_values"


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


def export_onnx(model, output_dir, image_processor=None, opset: int = 17, quantize: bool = False) -> dict:
    """
    Exports `model`'s scoring to `output_dir/model.onnx` with `torch.onnx.export`, next to its `config.json` and
    the image processor's `preprocessor_config.json`; checks onnxruntime against torch on random crops.

    Args:
        model ([`MPIQEModel`]): the model; exported in float32, in eval mode.
        output_dir (`str` or `os.PathLike`): the export folder (created).
        image_processor ([`MPIQEImageProcessor`], *optional*): saved with the graph; defaults to one with the CLIP
            image size as crop size.
        opset (`int`): ONNX opset of the TorchScript-based exporter.
        quantize (`bool`): also write `model_int8.onnx` (see [`quantize_onnx`]).

    Returns:
        `{"onnx": path, "max_abs_diff": float}` (+ `"onnx_int8"` with `quantize=True`): `max_abs_diff` is the largest
        difference of the normalised scores of onnxruntime and torch on two random images.
    """
    onnxruntime = _require("onnxruntime")
    _require("onnx")
    from .image_processing_mpiqe import MPIQEImageProcessor

    os.makedirs(output_dir, exist_ok=True)
    crop_size = model.config.clip_config.vision_config.image_size
    if image_processor is None:
        image_processor = MPIQEImageProcessor(crop_size=crop_size)
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
            dynamic_axes={_INPUT_NAME: {0: "batch_size", 1: "num_crops"}, **{name: {0: "batch_size"} for name in output_names}},
            opset_version=opset,
            dynamo=False,
        )
        expected = graph(example)[0].numpy()
    model.config.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {_INPUT_NAME: example.numpy()})
    result = {"onnx": path, "max_abs_diff": float(np.abs(scores - expected).max())}
    if quantize:
        result["onnx_int8"] = quantize_onnx(path, os.path.join(output_dir, QUANTIZED_ONNX_FILE))
    return result


def quantize_onnx(model_path, output_path) -> str:
    """onnxruntime's dynamic quantisation: int8 weights of the matrix products, activations quantised at run time."""
    _require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(os.fspath(model_path), os.fspath(output_path), weight_type=QuantType.QInt8)
    return os.fspath(output_path)


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
        from .configuration_mpiqe import MPIQEConfig
        from .image_processing_mpiqe import MPIQEImageProcessor

        path = os.path.join(export_dir, QUANTIZED_ONNX_FILE if quantized else ONNX_FILE)
        if not os.path.isfile(path):
            raise OSError(f"{export_dir} holds no {os.path.basename(path)}: export it with `mpiqe-export onnx`.")
        self.config = MPIQEConfig.from_pretrained(export_dir)
        self.image_processor = MPIQEImageProcessor.from_pretrained(export_dir)
        options = onnxruntime.SessionOptions()
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
        from .cli.scoring import ScoreBatch

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
            pixel_values = self.image_processor(images[start : start + batch_size], num_crops=num_crops)["pixel_values"]
            results += self.score_batch(pixel_values).results(self.config)
        return results[0] if single else results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpiqe-export", description="Export an MP-IQE model for deployment.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx_parser = formats.add_parser("onnx", help="ONNX graph for onnxruntime (text features folded in)")
    onnx_parser.add_argument("output_dir", help="folder to write model.onnx, config.json and preprocessor_config.json to")
    onnx_parser.add_argument("--model", "-m", required=True, help="Hub repo id or local folder of an MP-IQE checkpoint")
    onnx_parser.add_argument("--revision", default=None, help="Hub revision of the model")
    onnx_parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    onnx_parser.add_argument("--quantize", action="store_true", help="also write model_int8.onnx (dynamic int8)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `mpiqe-export`; returns the exit status (0 done, 2 the model cannot be loaded or exported)."""
    args = build_parser().parse_args(argv)
    from .image_processing_mpiqe import MPIQEImageProcessor
    from .modeling_mpiqe import MPIQEModel

    try:
        model = MPIQEModel.from_pretrained(args.model, revision=args.revision)
    except (OSError, ValueError) as err:
        print(f"mpiqe-export: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return 2
    try:
        processor = MPIQEImageProcessor.from_pretrained(args.model, revision=args.revision)
    except OSError:
        processor = None
    try:
        result = export_onnx(model, args.output_dir, image_processor=processor, opset=args.opset, quantize=args.quantize)
    except (ImportError, OSError, RuntimeError) as err:
        print(f"mpiqe-export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result['onnx']} (onnxruntime vs torch: max score difference {result['max_abs_diff']:.2e})")
    if "onnx_int8" in result:
        print(f"wrote {result['onnx_int8']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
