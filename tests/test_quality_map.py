"""Quality maps: Grad-CAM and eq. 10 window weights merged over the grid crops, and their overlays."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor
from mpiqe_hf.image_processing_mpiqe import covering_num_crops, grid_crop_positions
from mpiqe_hf.quality_map_mpiqe import (
    _merge_crops,
    _windows_to_patch_grid,
    compute_quality_maps,
    crop_coverage,
    distortion_window_weights,
    grid_crop_boxes,
    window_max_pool,
)
from mpiqe_hf.visualization import colorize, map_file_stem, render_overlay, save_map_overlays


def _images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),  # larger than the 30-px crop
        Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)),  # resized up before cropping
    ]


def test_maps_have_each_images_size_and_repeat_exactly(tester):
    model = tester.model()
    processor = MPIQEImageProcessor(crop_size=30, num_crops=4)
    images = _images()
    sizes = [(image.height, image.width) for image in images]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]

    first = model.quality_map(pixel_values, sizes)
    second = model.quality_map(pixel_values, sizes)
    assert [tuple(m.shape) for m in first.gradcam_maps] == sizes
    assert [tuple(m.shape) for m in first.distortion_maps] == sizes
    for a, b in zip(first.gradcam_maps + first.distortion_maps, second.gradcam_maps + second.distortion_maps):
        assert torch.equal(a, b)
        assert a.min() >= 0 and a.max() == 1  # scaled to [0, 1]
        assert a.std() > 0  # the map shows something
    with torch.no_grad():
        outputs = model(pixel_values)
    torch.testing.assert_close(first.score, outputs.score)
    torch.testing.assert_close(first.scene_logits, outputs.scene_logits)
    assert torch.equal(first.distortion_index, outputs.distortion_logits.argmax(-1))

    single = model.quality_map(pixel_values[:1], sizes[:1], text_features=model.get_text_features())
    torch.testing.assert_close(single.gradcam_maps[0], first.gradcam_maps[0])


def test_window_weights_are_those_of_the_distortion_alignment(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        tokens = model.encode_image(pixel_values.flatten(0, 1))
        features = model.get_text_features().distortion_features
        weights, similarity = distortion_window_weights(
            model.clip.visual_projection(tokens[:, 1:]),
            features,
            model.config.window_size,
            model.config.distortion_window_temperature,
        )
        logits = model(pixel_values).distortion_logits
    assert weights.shape == (pixel_values.shape[0] * pixel_values.shape[1], features.shape[0], 3 * 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    recomputed = model.clip.logit_scale.exp() * (weights * similarity).sum(-1)
    torch.testing.assert_close(recomputed.view(*pixel_values.shape[:2], -1).mean(1), logits)


def test_gradcam_is_relu_of_gradient_weighted_last_layer_patches(tester):
    """Recomputed by hand from the last layer's output (prompt tokens sit between CLS and the patches)."""
    model = tester.model()
    pixel_values = tester.pixel_values(batch_size=1, num_crops=1)
    layer = model.clip.vision_model.encoder.layers[-1]
    kept = {}

    def keep(module, args, output):
        output.retain_grad()
        kept["hidden"] = output

    handle = layer.register_forward_hook(keep)
    with torch.enable_grad():
        (-model(pixel_values).score.sum()).backward()
    handle.remove()
    num_prompts = model.config.visual_prompt_length
    patches = kept["hidden"][0, 1 + num_prompts :]
    gradients = kept["hidden"].grad[0, 1 + num_prompts :]
    expected = torch.relu((gradients.mean(0) * patches).sum(-1)).view(15, 15).detach()

    maps = compute_quality_maps(model, pixel_values, [(30, 30)])
    expected = torch.nn.functional.interpolate(expected[None, None], size=(30, 30), mode="bilinear")[0, 0]
    torch.testing.assert_close(maps.gradcam_maps[0], expected / expected.max())


def test_crops_are_placed_back_where_the_processor_cut_them():
    # two 30-px crops of a 30 x 50 image: columns 0..29 and 20..49 overlap on 20..29
    resized, positions = grid_crop_boxes(30, 50, 30, 30, 2)
    assert resized == (30, 50) and positions == [(0, 0), (0, 20)]
    merged = _merge_crops(
        torch.stack([torch.full((5, 5), 1.0), torch.full((5, 5), 3.0)]), (30, 30), positions, resized, (30, 50)
    )
    assert torch.allclose(merged[:, :20], torch.tensor(1 / 3))
    assert torch.allclose(merged[:, 20:30], torch.tensor(2 / 3))
    assert torch.allclose(merged[:, 30:], torch.tensor(1.0))
    # a 15 x 25 image is brought to 30 x 50 before cropping; its map comes back at 15 x 25
    assert grid_crop_boxes(15, 25, 30, 30, 2) == ((30, 50), positions)
    small = _merge_crops(
        torch.stack([torch.full((5, 5), 1.0), torch.full((5, 5), 3.0)]), (30, 30), positions, (30, 50), (15, 25)
    )
    assert small.shape == (15, 25) and torch.allclose(small[:, -5:], torch.tensor(1.0))


@pytest.mark.parametrize("grid, window_size", [(14, 4), (15, 3), (15, 4), (7, 7), (5, 1)])
def test_window_pooling_is_adaptive_max_pooling(grid, window_size):
    embeds = torch.randn(2, 6, grid, grid, generator=torch.Generator().manual_seed(grid))
    expected = torch.nn.functional.adaptive_max_pool2d(embeds, window_size).flatten(2).transpose(1, 2)
    assert torch.equal(window_max_pool(embeds, window_size), expected)


def test_window_weights_spread_over_their_pooling_regions():
    # 2 x 2 windows over a 5 x 5 grid: adaptive pooling regions rows/cols 0..2 and 2..4 share the middle
    grid = _windows_to_patch_grid(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2, 5)[0]
    assert grid[0, 0] == 1 and grid[0, 4] == 2 and grid[4, 0] == 3 and grid[4, 4] == 4
    assert grid[0, 2] == 1.5 and grid[2, 2] == 2.5


def test_maps_reject_inputs_that_do_not_fit(tester):
    model = tester.model()
    with pytest.raises(ValueError, match="image_sizes"):
        compute_quality_maps(model, tester.pixel_values(), [(30, 30)])
    with pytest.raises(ValueError, match=r"`pixel_values` must have shape .* got \(3, 30, 30\)"):
        model.quality_map(torch.zeros(3, 30, 30), [(30, 30)])
    with pytest.raises(ValueError, match="does not fit"):
        _merge_crops(torch.zeros(1, 5, 5), (30, 30), [(0, 5)], (30, 30), (30, 30))


def test_overlay_blends_the_map_and_draws_a_colour_bar():
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    values = np.zeros((48, 64))
    values[:, 32:] = 1.0
    overlay = render_overlay(image, values, title="score 3.2")
    pixels = np.asarray(overlay)
    # shown at least 320 px tall, the map blended over the image: the right half takes the bright end's colour
    assert overlay.height > 320 and overlay.width > 64 * 320 // 48
    image_right = round(64 * 320 / 48)
    shown = pixels[:, : image_right + 10]
    bright = colorize(np.ones((1, 1)))[0, 0].astype(int)
    blended = 128 * (1 - 0.55) + bright * 0.55  # the default opacity at the map's top value
    distance = np.abs(shown[100:400].astype(int) - blended).sum(-1)  # rows of the image
    columns = np.nonzero(distance.min(0) < 8)[0]
    assert image_right // 2 - 10 < columns.min() < image_right // 2 + 30  # the right half, and only it, is bright
    assert columns.max() > image_right - 10
    # the colour bar, right of the image, runs from the bright colour to the dark one
    bar = pixels[:, image_right + 10 :].astype(int)
    assert (np.abs(bar - bright).sum(-1) < 10).any()
    assert (np.abs(bar - colorize(np.zeros((1, 1)))[0, 0].astype(int)).sum(-1) < 10).any()
    with pytest.raises(ValueError, match="size"):
        render_overlay(image, np.zeros((10, 10)))
    # a map of part of the image says so above it; a whole one does not
    plain = np.asarray(render_overlay(image, values, title="score 3.2"))
    assert np.array_equal(np.asarray(render_overlay(image, values, title="score 3.2", coverage=1.0)), plain)
    partial = np.asarray(render_overlay(image, values, title="score 3.2", coverage=0.4))
    assert not np.array_equal(partial[:40], plain[:40]) and np.array_equal(partial[40:], plain[40:])


def test_overlays_are_saved_under_names_from_their_inputs(tmp_path):
    assert map_file_stem("photos/2024/a b.jpg") == "photos__2024__a__b"
    assert map_file_stem("../up/x.png") == "up__x"
    assert map_file_stem(17) == "17"
    image = Image.new("RGB", (40, 30))
    paths = save_map_overlays(
        tmp_path / "maps", "shots/a.png", image, np.zeros((30, 40)), np.ones((30, 40)), title="3.1"
    )
    assert [os.path.basename(path) for path in paths] == ["shots__a.quality_map.png", "shots__a.distortion_map.png"]
    assert all(Image.open(path).size[1] > 320 for path in paths)
    assert save_map_overlays(tmp_path / "maps", "b.png", image, np.zeros((30, 40)))[0].endswith("b.quality_map.png")


def test_pipeline_returns_maps_of_each_images_size(tester):
    from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline

    model = tester.model()
    processor = MPIQEImageProcessor(crop_size=30, num_crops=4)
    pipe = ImageQualityAssessmentPipeline(model=model, image_processor=processor)
    images = _images()
    array = np.array(images[0])
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    results = pipe([images[0], images[1], array, tensor], batch_size=2, return_map=True)
    for result, size in zip(results, [(50, 70), (20, 40), (50, 70), (50, 70)]):
        assert result["quality_map"].shape == size and result["distortion_map"].shape == size
        assert result["quality_map"].dtype == np.float32 and result["quality_map"].max() == 1
    single = pipe(images[1], return_map=True)
    # the 20 x 40 image is cut at 30 x 60: two 30-px crops cover it; the score is that of the map's crops
    pixel_values = processor(images[1], num_crops=2, return_tensors="pt")["pixel_values"]
    expected = model.quality_map(pixel_values, [(20, 40)])
    np.testing.assert_allclose(single["quality_map"], expected.gradcam_maps[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(results[1]["distortion_map"], expected.distortion_maps[0].numpy(), atol=1e-6)
    assert single["score"] == pytest.approx(pipe(images[1], num_crops=2)["score"], abs=1e-6)
    assert single["map_coverage"] == 1.0 and expected.coverage == [1.0]
    assert "quality_map" not in pipe(images[1])
    with pytest.raises(ValueError, match="quality"):
        pipe(images[1], return_map=True, output_format="classification")
    random_pipe = ImageQualityAssessmentPipeline(
        model=model, image_processor=MPIQEImageProcessor(crop_size=30, num_crops=4, crop_mode="random")
    )
    with pytest.raises(ValueError, match="grid"):
        random_pipe(images[1], return_map=True)


@pytest.mark.parametrize("height, width", [(30, 30), (61, 120), (100, 100), (31, 180), (200, 45), (93, 64)])
def test_covering_grid_covers_every_pixel_with_few_crops(height, width):
    # (61, 120): the least count, 3 x 4 = 12, is laid out 2 x 6 by grid_layout, which misses a row of pixels
    num_crops = covering_num_crops(height, width, 30, 30)
    positions = grid_crop_positions(height, width, 30, 30, num_crops)
    assert crop_coverage((height, width), (30, 30), positions) == 1.0
    least = -(-height // 30) * -(-width // 30)
    assert least <= num_crops <= 1.25 * least
    # enlarged images are covered at the size they are cut at; fewer crops leave a gap
    assert covering_num_crops(15, 25, 30, 30) == 2
    assert crop_coverage((30, 50), (30, 30), grid_crop_positions(30, 50, 30, 30, 1)) == pytest.approx(0.6)


def test_a_map_covers_the_whole_image_and_says_how_much_it_covers(tester):
    from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline

    model = tester.model()
    pipe = ImageQualityAssessmentPipeline(model=model, image_processor=MPIQEImageProcessor(crop_size=30, num_crops=2))
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (61, 150, 3), dtype=np.uint8))
    # the default: a covering grid (3 x 5 crops), every pixel under a crop, the map bright beyond the default crops
    result = pipe(image, return_map=True)
    assert result["map_coverage"] == 1.0
    assert (result["quality_map"][:, 60:90] > 0).any() and (result["quality_map"][:, -30:] > 0).any()
    # crops given: the map of those, and how little of the image they cover
    few = pipe(image, return_map=True, num_crops=2)
    assert few["map_coverage"] == pytest.approx(2 * 30 * 30 / (61 * 150), abs=1e-6)
    assert few["score"] == pytest.approx(pipe(image)["score"], abs=1e-6)
    # several images with covering grids of their own sizes, batched: each as alone
    batch = pipe([image, _images()[1]], return_map=True, batch_size=2)
    np.testing.assert_allclose(batch[0]["quality_map"], result["quality_map"], atol=1e-6)
    assert [item["map_coverage"] for item in batch] == [1.0, 1.0]
