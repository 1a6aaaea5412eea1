"""
The scoring backend of `mpiqe-score`, and the choice of device and dtype.

A backend is any object with

- `config`: the model's [`MPIQEConfig`] (MOS range, quality levels, scene and distortion names), and
- `score_batch(pixel_values) -> ScoreBatch`, `pixel_values` a float32 CPU tensor
  `(batch_size, num_crops, 3, height, width)` from [`MPIQEImageProcessor`] (pinned when the device is CUDA).

[`TorchScorer`] runs an [`MPIQEModel`], `mpiqe_hf.export_onnx.OnnxQualityScorer` an exported graph; another runtime
plugs in by implementing the same two members and being returned by [`build_scorer`].
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from ..score_batch import ScoreBatch
from ..scorer import cast_keeping_fp32_modules
from .errors import UsageError


DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("torch", "onnx", "onnx-int8")


def _to_numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.float().cpu().numpy()


class TorchScorer:
    """
    An [`MPIQEModel`] on `device` in `dtype`; its text features are computed once, here.

    With `compile=True` the scoring forward (vision tower, alignments, decoder and score head, the text features as
    fixed inputs) goes through `torch.compile` with static shapes: a batch smaller than the largest one seen so far is
    padded to it, so a run compiles once for its batch size instead of again for its last, smaller batch (a compile
    costs far more than scoring the padding). The first call of each shape compiles; a failure there (no C++ compiler
    for inductor, an unsupported platform) is a `UsageError`.
    """

    def __init__(self, model, device: torch.device, dtype: torch.dtype, compile: bool = False):
        self.weights_sha256 = _state_sha256(model)  # before the cast: the same weights in any dtype
        self.model = cast_keeping_fp32_modules(model.to(device), dtype).eval()
        self.config = model.config
        self.device = device
        self.dtype = dtype
        with torch.inference_mode():
            self.text_features = self.model.get_text_features()
        self.compiled = compile
        self._forward = torch.compile(self._scores, dynamic=False) if compile else self._scores
        self._compiled_shapes: set[tuple[int, ...]] = set()

    def _scores(self, pixel_values: torch.Tensor):
        output = self.model(pixel_values, text_features=self.text_features)
        return output.score.float(), output.scene_logits, output.distortion_logits

    def _compiled_scores(self, pixel_values: torch.Tensor):
        count = len(pixel_values)
        padded_count = max(
            [count, *(shape[0] for shape in self._compiled_shapes if shape[1:] == pixel_values.shape[1:])]
        )
        if padded_count > count:  # images are scored independently: the padding changes no score
            padding = pixel_values.new_zeros((padded_count - count, *pixel_values.shape[1:]))
            pixel_values = torch.cat([pixel_values, padding])
        shape = tuple(pixel_values.shape)
        if shape in self._compiled_shapes:
            outputs = self._forward(pixel_values)
        else:
            try:
                outputs = self._forward(pixel_values)
            except Exception as err:
                raise UsageError(
                    f"--compile: torch.compile failed: {_first_line(err)}; score without --compile"
                ) from err
            self._compiled_shapes.add(shape)
        return tuple(None if output is None else output[:count] for output in outputs)

    def score_batch(self, pixel_values: torch.Tensor) -> ScoreBatch:
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
            scores = self._compiled_scores if self.compiled else self._scores
            normalized, scene_logits, distortion_logits = scores(pixel_values)
            return ScoreBatch(
                score=_to_numpy(self.model.to_native_scale(normalized)),
                normalized_score=_to_numpy(normalized),
                scene_logits=_to_numpy(scene_logits),
                distortion_logits=_to_numpy(distortion_logits),
            )


def build_scorer(
    backend: str, model_name: str, revision: str | None, allow_pickle: bool, device, dtype, compile: bool = False
):
    """The scorer `--backend` names, loaded from `model_name` (for `onnx`, a folder of `mpiqe-export onnx`);
    `compile`: see [`TorchScorer`]."""
    if compile and backend != "torch":
        raise UsageError(f"--compile compiles the torch model; --backend {backend} does not run one")
    if backend == "torch":
        return TorchScorer(load_model(model_name, revision, allow_pickle), device, dtype, compile=compile)
    if backend in ("onnx", "onnx-int8"):
        if device.type != "cpu":
            raise UsageError(f"--backend {backend} runs on the CPU; drop --device {device}")
        quantized = backend == "onnx-int8"
        try:
            from ..export_onnx import OnnxQualityScorer

            scorer = OnnxQualityScorer(model_name, quantized=quantized)
        except (ImportError, OSError, ValueError) as err:
            raise UsageError(f"--backend {backend}: {_first_line(err)}") from err
        from ..export_onnx.exporter import ONNX_FILE, QUANTIZED_ONNX_FILE

        graph = QUANTIZED_ONNX_FILE if quantized else ONNX_FILE
        # the graph and any external-data file beside it, which the scorer reads
        scorer.weights_sha256 = _files_sha256(
            os.path.join(model_name, name) for name in sorted(os.listdir(model_name)) if name.startswith(graph)
        )
        return scorer
    raise UsageError(f"--backend {backend}: unknown backend; choose from {', '.join(BACKENDS)}")


def load_model(name: str, revision: str | None, allow_pickle: bool):
    """An [`MPIQEModel`]; `from_pretrained` refuses a checkpoint of another model type, naming it, before reading
    its weights."""
    from ..modeling_mpiqe import MPIQEModel

    if _config_without_model_type(name):
        raise UsageError(
            f"cannot load the model {name!r}: its config.json names no model_type, so it is no MP-IQE checkpoint "
            "(model_type 'mpiqe'); pass a folder written by MPIQEModel.save_pretrained or train.py, or a Hub id"
        )
    try:
        return MPIQEModel.from_pretrained(name, revision=revision, allow_pickle=allow_pickle)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot load the model {name!r}: {_first_line(err)}{_way_out(name, allow_pickle)}") from err


def _config_without_model_type(name: str) -> bool:
    try:
        with open(os.path.join(name, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # from_pretrained says what is wrong with it
    return isinstance(config, dict) and "model_type" not in config


def _way_out(name: str, allow_pickle: bool) -> str:
    """What to pass instead, for a local folder whose weights this backend does not read."""
    if not os.path.isdir(name):
        return ""
    files = os.listdir(name)
    if not allow_pickle and any(file.endswith((".bin", ".pt", ".pth")) for file in files):
        return " (its weights are pickles: pass --allow-pickle if you trust where they come from)"
    if any(file.endswith(".onnx") for file in files):
        return " (it is an ONNX export: pass --backend onnx)"
    return ""


def _state_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _files_sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_processor(name: str, revision: str | None):
    """The checkpoint's [`MPIQEImageProcessor`], or `None` when it has no `preprocessor_config.json`."""
    from ..image_processing_mpiqe import MPIQEImageProcessor

    try:
        return MPIQEImageProcessor.from_pretrained(name, revision=revision)
    except OSError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------------------------------
# Device and dtype
# ----------------------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA where available, else the CPU; an unavailable device is a `UsageError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UsageError(f"--device {name}: CUDA is not available ({why}: torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    try:  # a device torch names but cannot compute on and copy back from (meta, xla without its plugin, ...)
        (torch.ones(1, device=device) * 2).cpu()
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"--device {name}: cannot score on it ({reason}); pass cpu, cuda, cuda:N, mps or auto"
        ) from None
    return device


def cpu_bfloat16_unit() -> str | None:
    """The CPU's bfloat16 matrix unit, if it has one: then bfloat16 is about twice as fast as float32 or more."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to score in, and why: `auto` is bfloat16 on CUDA GPUs and CPUs that compute it natively."""
    if name != "auto":
        dtype = getattr(torch, name)
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} does not support it")
        return dtype, "--dtype"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: this GPU computes bfloat16"
        return torch.float32, "auto: this GPU has no bfloat16"
    if device.type == "cpu":
        unit = cpu_bfloat16_unit()
        if unit is not None:
            return torch.bfloat16, f"auto: this CPU has {unit}"
        return torch.float32, "auto: this CPU has no bfloat16 unit"
    return torch.float32, f"auto: {device.type}"
