"""Quality maps of MP-IQE: where in an image the model sees degradation.

Two maps per image, each computed on every crop and merged back onto the full image:

- **Grad-CAM** (the paper's Fig. 3) over the patch tokens of the last vision layer, for the *lowered* score: channel
  weights are the gradients of `-score` averaged over the patches, the map is the ReLU of the weighted tokens. Bright
  = features that pull the quality down.
- **Distortion windows** (eq. 10): the softmax over the `w x w` windows of the patch grid with which the windowed
  distortion alignment weighs each window's similarity to the predicted distortion's prompt. Bright = the windows
  that decide the distortion class.

Crops come from the image processor's deterministic grid; each crop's map is resized to the crop, the crops are
averaged where they overlap and the result is resized to the image's own size and scaled to `[0, 1]`. Pixels no crop
covers get 0, so every map comes with its coverage, the fraction of the image's pixels under a crop: a map of the whole
image needs [`covering_num_crops`] grid crops (the pipeline's `return_map=True` cuts that many), and the 8 default
crops of a large photo cover a small part of it. Everything is deterministic: the same image gives the same maps.

This file travels with the model as Hub remote code: it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .image_processing_mpiqe import enlarged_size, grid_crop_positions


__all__ = [
    "MPIQEQualityMapOutput",
    "as_crop_batch",
    "compute_quality_maps",
    "crop_coverage",
    "distortion_window_weights",
    "grid_crop_boxes",
    "window_max_pool",
]


@dataclass
class MPIQEQualityMapOutput(ModelOutput):
    r"""
    score (`torch.FloatTensor` of shape `(batch_size,)`):
        The model's score on the normalised [0, 1] scale (as in [`MPIQEOutput`]).
    scene_logits (`torch.FloatTensor` of shape `(batch_size, num_scene_classes)`, *optional*), distortion_logits
    (`torch.FloatTensor` of shape `(batch_size, num_distortion_classes)`, *optional*):
        As in [`MPIQEOutput`]: the maps come with the same forward pass as the scores.
    gradcam_maps (`list[torch.FloatTensor]`, one of shape `(height, width)` per image):
        Grad-CAM of the lowered score over the last vision layer's patch tokens, at the image's size, in `[0, 1]`.
    distortion_maps (`list[torch.FloatTensor]`, one of shape `(height, width)` per image, *optional*):
        Eq. 10 window weights of the predicted distortion, at the image's size, in `[0, 1]`. `None` for a model
        without distortion prompts.
    distortion_index (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        The predicted distortion class whose window weights `distortion_maps` shows.
    coverage (`list[float]`, one per image):
        The fraction of the image's pixels that the crops cover ([`crop_coverage`]); the maps are 0 elsewhere. 1.0
        when the crops are [`covering_num_crops`] grid crops.
    """

    score: torch.FloatTensor | None = None
    scene_logits: torch.FloatTensor | None = None
    distortion_logits: torch.FloatTensor | None = None
    gradcam_maps: list[torch.FloatTensor] | None = None
    distortion_maps: list[torch.FloatTensor] | None = None
    distortion_index: torch.LongTensor | None = None
    coverage: list[float] | None = None


def as_crop_batch(pixel_values: torch.Tensor) -> torch.Tensor:
    """
    The model's input layout, `(batch_size, num_crops, 3, height, width)`, from crops given that way or as
    `(batch_size, 3, height, width)` (one crop per image). Anything else (not a float tensor, another rank, no images
    or crops, not 3 channels) raises a `TypeError` or `ValueError` naming it and saying what to pass instead.
    """
    way_out = "cut images into crops with the model's MPIQEImageProcessor (`processor(images, return_tensors='pt')`)"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch tensor, got {type(pixel_values).__name__}: {way_out}.")
    if not pixel_values.is_floating_point():
        raise TypeError(f"`pixel_values` must be normalised float crops, got dtype {pixel_values.dtype}: {way_out}.")
    if pixel_values.dim() == 4:
        pixel_values = pixel_values.unsqueeze(1)
    if pixel_values.dim() != 5:
        raise ValueError(
            "`pixel_values` must have shape (batch_size, num_crops, 3, height, width) or "
            f"(batch_size, 3, height, width), got {tuple(pixel_values.shape)}: {way_out}."
        )
    batch_size, num_crops, channels = pixel_values.shape[:3]
    if batch_size == 0 or num_crops == 0:
        raise ValueError(
            f"`pixel_values` of shape {tuple(pixel_values.shape)} holds no crops: give at least one image and one crop."
        )
    if channels != 3:
        raise ValueError(
            f"`pixel_values` must hold RGB crops (3 channels), got {channels} in shape {tuple(pixel_values.shape)}: "
            f"{way_out}; it turns gray and RGBA images into RGB."
        )
    return pixel_values


def grid_crop_boxes(
    height: int, width: int, crop_height: int, crop_width: int, num_crops: int, max_image_size: int | None = None
):
    """
    Where the processor's grid crops of a `height x width` image lie: `((resized_height, resized_width), positions)`
    with `positions` the `(top, left)` corners in the (possibly downscaled or enlarged) image, in the order of the
    crops; `max_image_size` is the processor's.
    """
    resized = enlarged_size(height, width, crop_height, crop_width, max_image_size)
    return resized, grid_crop_positions(*resized, crop_height, crop_width, num_crops)


def crop_coverage(image_size: tuple[int, int], crop_size: tuple[int, int], positions: list[tuple[int, int]]) -> float:
    """The fraction of the pixels of an image of `image_size` that `crop_size` crops at `positions` cover."""
    covered = torch.zeros(image_size, dtype=torch.bool)
    for top, left in positions:
        covered[top : top + crop_size[0], left : left + crop_size[1]] = True
    return covered.float().mean().item()


def _pooling_bounds(size: int, window_size: int) -> list[tuple[int, int]]:
    """Adaptive pooling's bins over `size` positions: bin i covers [floor(i * size / w), ceil((i + 1) * size / w))."""
    # Non-negative operands only: ONNX integer division truncates, which equals floor division only for them.
    return [
        ((index * size) // window_size, ((index + 1) * size + window_size - 1) // window_size)
        for index in range(window_size)
    ]


def window_max_pool(grid_embeds: torch.Tensor, window_size: int) -> torch.Tensor:
    """
    `F.adaptive_max_pool2d` of `(num_images, dim, grid, grid)` to `w x w` windows, returned as
    `(num_images, w * w, dim)` (windows row by row). Written with static slices because the ONNX exporters cannot
    export adaptive pooling when `w` does not divide the grid (ViT-B/16: 14 patches, 4 windows).
    """
    bounds = _pooling_bounds(grid_embeds.shape[-1], window_size)
    rows = [grid_embeds[:, :, start:end].amax(dim=2) for start, end in bounds]
    return torch.stack([row[:, :, start:end].amax(dim=2) for row in rows for start, end in bounds], dim=1)


def distortion_window_weights(
    patch_embeds: torch.Tensor, distortion_features: torch.Tensor, window_size: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Eq. 10: patch embeddings `(num_images, num_patches, projection_dim)` are max-pooled into `w x w` windows and
    compared with each distortion feature `(num_classes, projection_dim)`.

    Returns `(weights, similarity)`, both `(num_images, num_classes, w * w)`: the softmax over windows of
    similarity / T-bar, and the cosine similarities themselves (windows row by row).
    """
    num_images, num_patches, dim = patch_embeds.shape
    grid = int(num_patches**0.5)
    assert grid * grid == num_patches, "the vision tower's patch grid is square"
    grid_embeds = patch_embeds.transpose(1, 2).reshape(num_images, dim, grid, grid)
    windows = F.normalize(window_max_pool(grid_embeds, window_size), dim=-1)
    similarity = torch.einsum("nwd,cd->ncw", windows, distortion_features)
    return torch.softmax(similarity / temperature, dim=-1), similarity


def _windows_to_patch_grid(window_values: torch.Tensor, window_size: int, grid: int) -> torch.Tensor:
    """
    `(num_images, w * w)` values of adaptive-max-pool windows -> `(num_images, grid, grid)`: each patch gets the mean
    of the windows whose pooling region holds it (regions overlap when `grid` is not a multiple of `w`).
    """
    values = window_values.view(-1, window_size, window_size)
    membership = torch.zeros(window_size, grid, dtype=values.dtype, device=values.device)
    for index, (start, end) in enumerate(_pooling_bounds(grid, window_size)):
        membership[index, start:end] = 1.0
    membership = membership / membership.sum(dim=0, keepdim=True)
    return torch.einsum("ir,nij,jc->nrc", membership, values, membership)


def _merge_crops(
    crop_maps: torch.Tensor,
    crop_size: tuple[int, int],
    positions: list[tuple[int, int]],
    resized_size: tuple[int, int],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """
    Per-crop maps `(num_crops, grid_height, grid_width)` -> one map `(height, width)` of the image: each map is resized
    to its `crop_size` crop at `positions` in the `resized_size` image, crops are averaged where they overlap, and
    the result is resized to `image_size` and scaled to `[0, 1]`.
    """
    crop_height, crop_width = crop_size
    if len(positions) != crop_maps.shape[0]:
        raise ValueError(f"{len(positions)} crop positions were given for {crop_maps.shape[0]} crops.")
    for top, left in positions:
        if top < 0 or left < 0 or top + crop_height > resized_size[0] or left + crop_width > resized_size[1]:
            raise ValueError(
                f"A {crop_height}x{crop_width} crop at (top={top}, left={left}) does not fit the "
                f"{resized_size[0]}x{resized_size[1]} image it was cut from."
            )
    upsampled = F.interpolate(crop_maps.float()[:, None], size=crop_size, mode="bilinear", align_corners=False)
    total = torch.zeros(resized_size, dtype=torch.float32, device=crop_maps.device)
    count = torch.zeros_like(total)
    for crop_map, (top, left) in zip(upsampled[:, 0], positions):
        total[top : top + crop_height, left : left + crop_width] += crop_map
        count[top : top + crop_height, left : left + crop_width] += 1.0
    merged = total / count.clamp_min(1.0)
    if tuple(resized_size) != tuple(image_size):
        merged = F.interpolate(merged[None, None], size=tuple(image_size), mode="bilinear", align_corners=False)[0, 0]
    merged = merged.clamp_min(0.0)
    peak = merged.max()
    return merged / peak if peak > 0 else merged


def _scores_with_last_layer_gradients(model, pixel_values, text_features):
    """`(outputs, last layer's tokens, their gradients for a lower score, post-layernorm tokens)` of one forward and
    backward pass: hooks cut the graph at the last vision layer and keep the tokens the alignments see."""
    vision_model = model.clip.vision_model
    captured = {}

    def make_last_layer_a_leaf(module, args, output):
        # Cut the graph here: Grad-CAM needs gradients down to this layer only, also when no vision weight is trained.
        hidden_states = output[0] if isinstance(output, tuple) else output
        leaf = hidden_states.detach().requires_grad_(True)
        captured["last_layer"] = leaf
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    def keep_tokens(module, args, output):
        captured["tokens"] = output

    handles = [
        vision_model.encoder.layers[-1].register_forward_hook(make_last_layer_a_leaf),
        vision_model.post_layernorm.register_forward_hook(keep_tokens),
    ]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            outputs = model(pixel_values=pixel_values.clone(), text_features=text_features, return_dict=True)
            last_layer = captured["last_layer"]
            (gradients,) = torch.autograd.grad(-outputs.crop_scores.sum(), last_layer)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, last_layer, gradients, captured["tokens"].detach()


def _distortion_grid(model, tokens, text_features, distortion_logits, num_crops, grid_size):
    """`(per-crop patch grids of the predicted distortion's eq. 10 window weights, predicted distortion per image)`."""
    with torch.no_grad():
        patch_embeds = model.clip.visual_projection(tokens[:, 1:])
        weights, _ = distortion_window_weights(
            patch_embeds,
            text_features.distortion_features.to(patch_embeds.dtype),
            model.config.window_size,
            model.config.distortion_window_temperature,
        )
    distortion_index = distortion_logits.detach().argmax(dim=-1)
    crop_classes = distortion_index.repeat_interleave(num_crops)
    chosen = weights[torch.arange(weights.shape[0], device=weights.device), crop_classes].float()
    return _windows_to_patch_grid(chosen, model.config.window_size, grid_size), distortion_index


def _checked_image_sizes(image_sizes, batch_size: int) -> list[tuple[int, int]]:
    """`image_sizes` as `(height, width)` tuples of ints, or a `ValueError` saying what is expected."""
    message = (
        f"`image_sizes` must give one (height, width) of positive ints per image ({batch_size}), the size of each "
        f"image before processing (`(image.height, image.width)`), got {image_sizes!r}."
    )
    try:
        sizes = [tuple(size) for size in image_sizes]
    except TypeError:
        raise ValueError(message) from None
    valid = len(sizes) == batch_size and all(
        len(size) == 2
        and all(isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 1 for side in size)
        for size in sizes
    )
    if not valid:
        raise ValueError(message)
    return [(int(height), int(width)) for height, width in sizes]


def compute_quality_maps(
    model, pixel_values: torch.Tensor, image_sizes, text_features=None, max_image_size: int | None = None
) -> MPIQEQualityMapOutput:
    """
    Grad-CAM and distortion-window maps of images cut into the processor's grid crops (see
    [`MPIQEModel.quality_map`]).

    Args:
        model ([`MPIQEModel`]): the model, in eval mode for deterministic maps.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_crops, 3, crop_height, crop_width)`):
            grid crops made by [`MPIQEImageProcessor`] (`crop_mode="grid"`).
        image_sizes (sequence of `(height, width)`, one per image): the sizes of the images before processing.
        text_features ([`MPIQETextFeatures`], *optional*): `model.get_text_features()`, computed here if not given.
        max_image_size (`int`, *optional*): the processor's `max_image_size`, which placed the crops.
    """
    pixel_values = as_crop_batch(pixel_values)
    batch_size, num_crops, _, crop_height, crop_width = pixel_values.shape
    image_sizes = _checked_image_sizes(image_sizes, batch_size)

    if text_features is None:
        with torch.no_grad():
            text_features = model.get_text_features()
    outputs, last_layer, gradients, tokens = _scores_with_last_layer_gradients(model, pixel_values, text_features)
    num_patches = tokens.shape[1] - 1
    patch_size = model.config.clip_config.vision_config.patch_size
    grid_shape = (crop_height // patch_size, crop_width // patch_size)
    assert grid_shape[0] * grid_shape[1] == num_patches, "one token per patch of the crop"
    # Visual prompt outputs sit between CLS and the patches: the patches are the last tokens.
    activations = last_layer.detach()[:, -num_patches:].float()
    channel_weights = gradients[:, -num_patches:].float().mean(dim=1, keepdim=True)
    gradcam = F.relu((channel_weights * activations).sum(dim=-1)).view(-1, *grid_shape)

    distortion_grid = distortion_index = None
    if outputs.distortion_logits is not None:
        distortion_grid, distortion_index = _distortion_grid(
            model, tokens, text_features, outputs.distortion_logits, num_crops, grid_shape[0]
        )

    gradcam_maps, distortion_maps = [], [] if distortion_grid is not None else None
    coverage = []
    for index, image_size in enumerate(image_sizes):
        resized_size, positions = grid_crop_boxes(*image_size, crop_height, crop_width, num_crops, max_image_size)
        crops = slice(index * num_crops, (index + 1) * num_crops)
        crop_size = (crop_height, crop_width)
        coverage.append(crop_coverage(resized_size, crop_size, positions))
        gradcam_maps.append(_merge_crops(gradcam[crops], crop_size, positions, resized_size, image_size))
        if distortion_grid is not None:
            distortion_maps.append(
                _merge_crops(distortion_grid[crops], crop_size, positions, resized_size, image_size)
            )
    detach = lambda tensor: None if tensor is None else tensor.detach()  # noqa: E731
    return MPIQEQualityMapOutput(
        score=outputs.score.detach(),
        scene_logits=detach(outputs.scene_logits),
        distortion_logits=detach(outputs.distortion_logits),
        gradcam_maps=gradcam_maps,
        distortion_maps=distortion_maps,
        distortion_index=distortion_index,
        coverage=coverage,
    )
