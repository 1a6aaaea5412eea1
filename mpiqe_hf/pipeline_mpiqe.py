"""The `image-quality-assessment` pipeline of MP-IQE.

This file is uploaded with the model as Hub remote code, so it only imports torch, numpy, Pillow, transformers and its
sibling model files (relatively).
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY, PipelineRegistry

from .configuration_mpiqe import MPIQEConfig
from .image_processing_mpiqe import MPIQEImageProcessor, covering_num_crops
from .image_utils_mpiqe import load_image


__all__ = [
    "ImageQualityAssessmentPipeline",
    "MPIQEImageClassificationPipeline",
    "register_pipeline",
    "quality_level_index",
    "quality_result",
    "PIPELINE_TASK",
    "OUTPUT_FORMATS",
]

#: The task name of the pipeline registered with transformers.
PIPELINE_TASK = "image-quality-assessment"
#: The task under which saved checkpoints announce the remote-code pipeline: the Hub widget's task.
REMOTE_PIPELINE_TASK = "image-classification"

#: What an input that cannot be decoded does: `"raise"` a `ValueError` naming it, or `"return"` an error entry.
ERROR_MODES = ("raise", "return")

#: `"quality"`: one dict per image with score, quality level, scene and distortion.
#: `"classification"`: the image-classification form, a list of `{"label", "score"}` over the quality levels.
OUTPUT_FORMATS = ("quality", "classification")


def quality_level_index(normalized_score: float, num_levels: int) -> int:
    """The band of `[0, 1]` split into `num_levels` equal bands that holds the score (clamped into `[0, 1]`)."""
    value = min(max(float(normalized_score), 0.0), 1.0)
    return min(int(math.floor(value * num_levels)), num_levels - 1)


def quality_result(config, normalized_score, native_score, scene_logits=None, distortion_logits=None) -> dict:
    """
    One image's result, as the pipeline, `mpiqe-score` and the ONNX scorer give it:
    `{"score", "quality", "scene", "distortion", "normalized_score"}`.

    Args:
        config ([`MPIQEConfig`]): the model's quality levels and class names.
        normalized_score, native_score: the image's score on `[0, 1]` and on the model's MOS scale (numbers, or
            one-element tensors or arrays).
        scene_logits, distortion_logits: the image's `(num_classes,)` logits (torch or numpy), or `None` for a model
            without those prompts (the entry is then `None`); the entry is the class of the largest logit.
    """
    normalized = float(normalized_score)
    levels = config.quality_levels
    result = {
        "score": float(native_score),
        "quality": levels[quality_level_index(normalized, len(levels))],
        "scene": None,
        "distortion": None,
        "normalized_score": normalized,
    }
    for key, logits, names in (
        ("scene", scene_logits, config.scene_classes),
        ("distortion", distortion_logits, config.distortion_classes),
    ):
        if logits is not None:
            result[key] = names[int(logits.argmax())]
    return result


def _normal_cdf(value: float) -> float:
    return 0.5 * (1.0 + math.erf(value / math.sqrt(2.0)))


def quality_level_weights(normalized_score: float, num_levels: int) -> list[float]:
    """
    A soft view of the score over the quality levels, for the image-classification form: the mass that a normal
    distribution centred on the (clamped) score, with a standard deviation of half a band and truncated to `[0, 1]`,
    puts on each band. The largest weight is always on the band that holds the score. These are not calibrated
    probabilities: the model predicts one score, not a distribution.
    """
    centre = min(max(float(normalized_score), 0.0), 1.0)
    sigma = 0.5 / num_levels
    edges = [_normal_cdf((index / num_levels - centre) / sigma) for index in range(num_levels + 1)]
    masses = [max(edges[index + 1] - edges[index], 0.0) for index in range(num_levels)]
    total = sum(masses) or 1.0
    return [mass / total for mass in masses]


class _NumberedInput(NamedTuple):
    """An item of a list input with its position, so that an error can name it."""

    position: int
    image: Any


class ImageQualityAssessmentPipeline(Pipeline):
    """
    Scores the quality of images with an [`MPIQEModel`].

    Inputs: a path, an `http(s)://` URL, a `PIL.Image.Image`, encoded bytes, a numpy array (`(H, W)`, or `(H, W, C)` /
    `(C, H, W)` with 1, 3 or 4 channels) or a torch tensor (`(C, H, W)` or `(H, W)`): one image, one result. A list of
    them, or a 4-D array (`(B, H, W, C)` or `(B, C, H, W)`) or tensor (`(B, C, H, W)`), is a batch (run `batch_size`
    at a time): a list of results, in order, each equal to the image's own result; an empty list gives `[]`.
    The model's processor is its checkpoint's `preprocessor_config.json`, or, where the checkpoint has none (an adapter
    saved by `mpiqe_hf.save_adapter`), `MPIQEImageProcessor.default_for` its config. Keyword arguments (at construction
    or per call):

    - `top_k` (`int`): also return the `top_k` most probable scenes and distortions (softmax of the model's
      logits) and the quality-level weights, as lists of `{"label", "score"}` under `"scene_scores"`,
      `"distortion_scores"` and `"quality_scores"`. In the classification form it limits the number of labels.
    - `output_format` (`"quality"` (default) or `"classification"`).
    - `num_crops` (`int`): crops per image (defaults to the image processor's).
    - `return_normalized_score` (`bool`): also return `"normalized_score"`, the model's score on `[0, 1]`.
    - `timeout` (`float`): seconds to wait for an image URL.
    - `return_map` (`bool`): also return `"quality_map"` and `"distortion_map"`, `(height, width)` float32 arrays in
      `[0, 1]` at the image's size ([`MPIQEModel.quality_map`]: Grad-CAM of the lowered score and the eq. 10 window
      weights of the predicted distortion, merged over the crop grid), and `"map_coverage"`, the fraction of the
      image's pixels under a crop (the maps are 0 elsewhere). Unless `num_crops` is given, each image is cut into the
      grid that covers all of it ([`covering_num_crops`], coverage 1.0; images then run one at a time, as each has
      its own number of crops), and the score returned with the map is the mean over those crops: it can differ a
      little from the score without a map (the processor's `num_crops` crops). Needs grid crops and the quality
      form.
    - `errors` (`"raise"` (default) or `"return"`): an input that cannot be decoded raises a `ValueError` naming it
      (its position in a list, and its path or kind), or, with `"return"`, gets an entry with its `"error"` message
      (and `None` for the score, quality, scene and distortion; `{"error": ...}` in the classification form) while
      the other inputs are scored.

    Output per image, `output_format="quality"`:
    `{"score": float on the model's native MOS scale, "quality": one of config.quality_levels, "scene": the most
    likely scene, "distortion": the dominant distortion}` (`scene`/`distortion` are `None` for a model without
    those prompts). With `output_format="classification"`: `[{"label": quality level, "score": weight}, ...]`,
    best first, as the image-classification pipeline returns it.
    """

    _load_processor = False
    # Optional: a checkpoint without `preprocessor_config.json` (an adapter) gets its config's default processor.
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model_type = getattr(self.model.config, "model_type", None)
        if model_type != MPIQEConfig.model_type:
            raise ValueError(
                f"The {PIPELINE_TASK} pipeline needs an MP-IQE model (model_type='{MPIQEConfig.model_type}'), got a "
                f"{type(self.model).__name__} with model_type={model_type!r}."
            )
        if self.image_processor is None:
            source = self.model.config.name_or_path
            self.image_processor = (
                MPIQEImageProcessor.from_pretrained_or_default(source, self.model.config)
                if source
                else MPIQEImageProcessor.default_for(self.model.config)
            )
        # What `return_map` and `num_crops` are when a call does not set them, to tell when maps cut covering grids.
        self._default_return_map = bool(kwargs.get("return_map"))
        self._default_num_crops = kwargs.get("num_crops")
        # The text half of the model does not depend on the image: computed at the first call, reused for all.
        self._text_features = None

    default_output_format = "quality"

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        output_format: str | None = None,
        num_crops: int | None = None,
        return_normalized_score: bool | None = None,
        timeout: float | None = None,
        errors: str | None = None,
        return_map: bool | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}.")
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if num_crops is not None:
            if isinstance(num_crops, bool) or not isinstance(num_crops, int) or num_crops < 1:
                raise ValueError(f"`num_crops` must be a positive int, got {num_crops!r}.")
            preprocess_params["num_crops"] = num_crops
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
            preprocess_params["timeout"] = timeout
        if errors is not None:
            if errors not in ERROR_MODES:
                raise ValueError(f"`errors` must be one of {ERROR_MODES}, got {errors!r}.")
            preprocess_params["errors"] = errors
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        if output_format is not None:
            if output_format not in OUTPUT_FORMATS:
                raise ValueError(f"`output_format` must be one of {OUTPUT_FORMATS}, got {output_format!r}.")
            postprocess_params["output_format"] = output_format
        for name, value in (("return_normalized_score", return_normalized_score), ("return_map", return_map)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if return_normalized_score is not None:
            postprocess_params["return_normalized_score"] = return_normalized_score
        if return_map is not None:
            for params in (preprocess_params, forward_params, postprocess_params):
                params["return_map"] = return_map
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs: Any = None, **kwargs: Any):
        """Scores one image (returns its result) or a batch: a list, or a 4-D array or tensor (returns a list)."""
        if inputs is None:
            inputs = kwargs.pop("images", None)
        if inputs is None:
            raise ValueError("No image was given: pass a path, URL, PIL image, bytes, array or tensor, or a list.")
        if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
            inputs = list(inputs)
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            if not inputs:
                return []
            for index, image in enumerate(inputs):
                if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
                    raise ValueError(
                        f"input {index}: a 4-D {type(image).__name__} of shape {tuple(image.shape)} is a batch of "
                        "images, not one: pass it on its own (not inside a list), or a list of 3-D images."
                    )
            inputs = [_NumberedInput(index, image) for index, image in enumerate(inputs)]
        return_map = kwargs.get("return_map", self._default_return_map)
        if return_map and kwargs.get("num_crops", self._default_num_crops) is None:
            # Each image's covering grid has its own number of crops, which a batch could not stack.
            kwargs["batch_size"] = 1
        return super().__call__(inputs, **kwargs)

    # -- steps ---------------------------------------------------------------------------------------------------------

    @staticmethod
    def _decode(image: Any, timeout: float | None) -> Any:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            from transformers.image_utils import load_image as load_url

            try:
                image = load_url(image, timeout=timeout)
            # The HTTP client's errors (no network, unknown host, timeout, HTTP status) and undecodable content.
            except Exception as err:
                raise ValueError(
                    f"Cannot load image URL '{image}': {type(err).__name__}: {err}. Check the address and the "
                    "network (or `timeout`), or download the image and pass its path."
                ) from err
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return image
        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, dict, Image.Image)) or hasattr(
            image, "read"
        ):
            return load_image(image)
        raise ValueError(
            f"Cannot score an input of type {type(image).__name__}: pass a path, an http(s) URL, a PIL image, encoded "
            "bytes, a numpy array or a torch tensor."
        )

    def preprocess(
        self,
        image: Any,
        num_crops: int | None = None,
        timeout: float | None = None,
        errors: str = "raise",
        return_map: bool = False,
    ):
        position = None
        if isinstance(image, _NumberedInput):
            position, image = image
        dtype = self.dtype or torch.float32
        if return_map and getattr(self.image_processor, "crop_mode", "grid") != "grid":
            raise ValueError("`return_map=True` places grid crops back on the image: use crop_mode='grid'.")
        try:
            decoded = self._decode(image, timeout)
        except ValueError as err:
            message = str(err) if position is None else f"input {position}: {err}"
            if errors == "raise":
                raise ValueError(message) from err
            # A stand-in of the right shape keeps the batch whole; its score is dropped in `postprocess`.
            crops = num_crops or self.image_processor.num_crops
            size = self.image_processor.crop_size
            stand_in = torch.zeros(1, crops, 3, size["height"], size["width"], dtype=dtype)
            result = {"pixel_values": stand_in, "error": message}
            if return_map:
                result["image_size"] = torch.tensor([[size["height"], size["width"]]])
            return result
        try:
            if return_map:
                image_size = tuple(self.image_processor.process_image(decoded).shape[1:])
                if num_crops is None:
                    crop = self.image_processor.crop_size
                    num_crops = covering_num_crops(
                        *image_size, crop["height"], crop["width"], self.image_processor.max_image_size
                    )
            features = self.image_processor(decoded, num_crops=num_crops, return_tensors="pt")
        except ValueError as err:
            if position is None:
                raise
            raise ValueError(f"input {position}: {err}") from err
        result = {"pixel_values": features["pixel_values"].to(dtype)}
        if return_map:
            result["image_size"] = torch.tensor([image_size])
        if errors == "return":
            result["error"] = None
        return result

    def _forward(self, model_inputs, return_map: bool = False):
        if self._text_features is None:
            self._text_features = self.model.get_text_features()
        pixel_values = model_inputs["pixel_values"]
        if return_map:
            outputs = self.model.quality_map(
                pixel_values,
                model_inputs["image_size"].tolist(),
                text_features=self._text_features,
                max_image_size=self.image_processor.max_image_size,
            )
        else:
            outputs = self.model(pixel_values=pixel_values, text_features=self._text_features)
        result = {"normalized_score": outputs.score, "native_score": self.model.to_native_scale(outputs.score)}
        if "error" in model_inputs:
            result["error"] = model_inputs["error"]
        if outputs.scene_logits is not None:
            result["scene_logits"] = outputs.scene_logits
        if outputs.distortion_logits is not None:
            result["distortion_logits"] = outputs.distortion_logits
        if return_map:
            result["quality_map"] = outputs.gradcam_maps
            result["distortion_map"] = outputs.distortion_maps
            result["map_coverage"] = torch.tensor(outputs.coverage)
        return result

    def postprocess(
        self,
        model_outputs,
        top_k: int | None = None,
        output_format: str | None = None,
        return_normalized_score: bool = False,
        return_map: bool = False,
    ):
        config = self.model.config
        output_format = output_format or self.default_output_format
        if return_map and output_format != "quality":
            raise ValueError("`return_map=True` needs output_format='quality' (the classification form has no map).")
        error = model_outputs.get("error")
        if error is not None:
            if output_format == "classification":
                return {"error": error}
            return {"score": None, "quality": None, "scene": None, "distortion": None, "error": error}
        families = (("scene", config.scene_classes), ("distortion", config.distortion_classes))
        logits = {}
        for key, _ in families:
            value = model_outputs.get(f"{key}_logits")
            logits[key] = None if value is None else value.reshape(-1).float()
        result = quality_result(
            config,
            model_outputs["normalized_score"].reshape(-1)[0].float(),
            model_outputs["native_score"].reshape(-1)[0].float(),
            logits["scene"],
            logits["distortion"],
        )
        normalized, level = result["normalized_score"], result["quality"]
        levels = list(config.quality_levels)
        weights = quality_level_weights(normalized, len(levels))
        quality_scores = sorted(
            ({"label": name, "score": weight} for name, weight in zip(levels, weights)),
            key=lambda item: (-item["score"], item["label"] != level),
        )
        if output_format == "classification":
            return quality_scores[: top_k or len(levels)]

        if not return_normalized_score:
            del result["normalized_score"]
        if "error" in model_outputs:
            result["error"] = None
        for key, names in families:
            if top_k and logits[key] is not None:
                probabilities = torch.softmax(logits[key], dim=-1)
                values, indices = probabilities.topk(min(top_k, len(names)))
                result[f"{key}_scores"] = [
                    {"label": names[int(index)], "score": float(value)} for value, index in zip(values, indices)
                ]
        if top_k:
            result["quality_scores"] = quality_scores[:top_k]
        if return_map:
            for key in ("quality_map", "distortion_map"):
                maps = model_outputs[key]
                # one image: the list of `_forward`; in a batch: that image's map with a leading axis of 1
                value = None if maps is None else maps[0] if isinstance(maps, list) else maps
                result[key] = None if value is None else value.float().reshape(value.shape[-2:]).numpy()
            result["map_coverage"] = float(model_outputs["map_coverage"].reshape(-1)[0])
        return result


class MPIQEImageClassificationPipeline(ImageQualityAssessmentPipeline):
    """
    The same pipeline answering in the image-classification form by default. Saved checkpoints announce it in
    `custom_pipelines` under the `image-classification` task, so that `pipeline(model=repo, trust_remote_code=True)`
    and the Hub widget work without `mpiqe_hf` installed. Pass `output_format="quality"` for the full dict.
    """

    default_output_format = "classification"


def register_pipeline() -> None:
    """Registers the `image-quality-assessment` task with transformers: `pipeline(PIPELINE_TASK, model=...)`.

    The task loads its model with `MPIQEModel.from_pretrained`, which refuses another model type before loading any
    weights."""
    from .modeling_mpiqe import MPIQEModel

    if PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=ImageQualityAssessmentPipeline, pt_model=MPIQEModel, type="image"
        )


# `Pipeline.save_pretrained` announces a pipeline class under the task it was registered for and stores its code.
# The widget class is registered in a registry of its own, so that transformers' global `image-classification` task
# stays transformers' own in every process that imports this file.
PipelineRegistry(supported_tasks={}, task_aliases={}).register_pipeline(
    REMOTE_PIPELINE_TASK, pipeline_class=MPIQEImageClassificationPipeline, pt_model=AutoModel, type="image"
)
