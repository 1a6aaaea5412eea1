"""Inference Endpoints handler of an MP-IQE repository (uploaded as `handler.py` by `MPIQEModel.push_to_hub`).

Inference Endpoints import this file from the repository, build `EndpointHandler(path)` once and call it with each
request: `{"inputs": <image>, "parameters": {...}}`, the image being the raw request body (`bytes`), a `PIL.Image`
(image content types are decoded by the serving toolkit), a base64 string or data URI (JSON requests) or an
`http(s)` URL.

Without parameters the answer is the image-classification list the Hub widget draws,
`[{"label": quality level, "score": weight}, ...]`, best first. `{"parameters": {"output_format": "quality"}}`
returns the full result instead: `{"score", "quality", "scene", "distortion"}` (+ `"scene_scores"`,
`"distortion_scores"`, `"quality_scores"` with `top_k`, `"normalized_score"` with `return_normalized_score`).

The endpoint needs only torch, transformers and Pillow: the model, processor and pipeline are the repository's
remote code. This file imports nothing from `mpiqe_hf`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from PIL import Image


#: Pipeline keyword arguments a request may set.
ALLOWED_PARAMETERS = ("top_k", "output_format", "num_crops", "return_normalized_score")


def decode_inputs(inputs: Any) -> Any:
    """The request's image as the pipeline takes it: base64 text (or a data URI; line breaks and spaces, as the
    `base64` command wraps its output, are ignored) becomes its bytes; bytes, PIL images and URLs pass as they are
    (the pipeline decodes them and names what is wrong with a bad image)."""
    if isinstance(inputs, dict) and "image" in inputs:
        return decode_inputs(inputs["image"])
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        return bytes(inputs)
    if isinstance(inputs, Image.Image):
        return inputs
    if isinstance(inputs, str):
        text = inputs.strip()
        if text.startswith(("http://", "https://")):
            return text
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(
                "`inputs` is neither an http(s) URL nor a base64-encoded image: send the image's bytes as base64 "
                "(`base64 photo.jpg`), as a data URI, or as the raw request body."
            ) from err
    raise ValueError(
        f"`inputs` must be image bytes, a PIL image, a base64 string or an http(s) URL, got {type(inputs).__name__}."
    )


class EndpointHandler:
    """
    Loads the repository at `path` (its remote-code pipeline) once; each call scores one image.

    Args:
        path (`str`): the local folder of the repository, as Inference Endpoints pass it.
    """

    def __init__(self, path: str = ""):
        import torch
        from transformers import pipeline

        device = 0 if torch.cuda.is_available() else -1
        self.pipeline = pipeline("image-classification", model=path or ".", trust_remote_code=True, device=device)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
        if not isinstance(data, dict) or "inputs" not in data:
            got = f"a dict with keys {sorted(data)}" if isinstance(data, dict) else f"a {type(data).__name__}"
            raise ValueError(
                'The request must be {"inputs": <image: base64, data URI or http(s) URL>, "parameters": {...}}, '
                f"got {got}."
            )
        parameters = data.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise ValueError(
                f'`parameters` must be a JSON object such as {{"top_k": 3}}, got a {type(parameters).__name__}.'
            )
        unknown = sorted(set(parameters) - set(ALLOWED_PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown parameters {unknown}; allowed: {list(ALLOWED_PARAMETERS)}.")
        return self.pipeline(decode_inputs(data["inputs"]), **parameters)
