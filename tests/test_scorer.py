"""MPIQEScorer: the pipeline's scores from tensors, files and arrays; pixel gradients as a loss; Ray Data and
`datasets` batches."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import pipeline

from mpiqe_hf import PIPELINE_TASK, MPIQEImageProcessor, MPIQEScorer, load_image


LABELS = ("quality", "scene", "distortion")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("scorer-model")
    MPIQEModelTester().model(mos_min=1.0, mos_max=5.0).save_pretrained(folder)
    MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three PNGs of different sizes, none smaller than the 30 px crop (so that none is resized)."""
    folder = tmp_path_factory.mktemp("scorer-images")
    rng = np.random.default_rng(5)
    paths = []
    for index, (width, height) in enumerate([(40, 30), (64, 48), (30, 90)]):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def expected(checkpoint, images):
    """The pipeline's result for each image."""
    return pipeline(PIPELINE_TASK, model=checkpoint)(images)


@pytest.fixture(scope="module")
def scorer(checkpoint):
    return MPIQEScorer(checkpoint)


def pixels(image) -> torch.Tensor:
    """A path or PIL image -> its `(1, 3, height, width)` float tensor in [0, 1]."""
    array = np.asarray(load_image(image), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def scores_of(results):
    return [result["score"] for result in results]


def test_tensors_paths_pil_images_and_arrays_score_as_the_pipeline(scorer, images, expected):
    for path, result in zip(images, expected):
        score = scorer(pixels(path))
        assert score.shape == (1,) and score.dtype == torch.float32 and not score.requires_grad
        assert score.item() == pytest.approx(result["score"], abs=1e-5)
    # a batch of one size: an image and its mirror image
    mirrored = Image.open(images[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = torch.cat([pixels(images[1]), pixels(mirrored)])
    reference = scores_of(pipeline(PIPELINE_TASK, model=scorer.model, image_processor=scorer.processor)([mirrored]))
    assert scorer(batch).tolist() == pytest.approx([expected[1]["score"], *reference], abs=1e-5)

    for inputs in (images, [load_image(path) for path in images], [np.asarray(load_image(path)) for path in images]):
        assert scorer(inputs).tolist() == pytest.approx(scores_of(expected), abs=1e-5)
    assert scorer(images[2]).tolist() == pytest.approx([expected[2]["score"]], abs=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        {"crop_mode": "random", "seed": 4, "num_crops": 3},  # the processor's draws of crop positions
        {"max_image_size": 50},  # 64 x 48 is downscaled, 30 x 90 too, then enlarged back to the crop
    ],
)
def test_tensors_follow_the_processor_settings(checkpoint, images, settings):
    processor = MPIQEImageProcessor(crop_size=30, **settings)
    scorer = MPIQEScorer(checkpoint, processor=processor)
    reference = pipeline(PIPELINE_TASK, model=checkpoint, image_processor=processor)
    for path in images[1:]:
        image = pixels(path)
        # The pipeline resizes float pixels with Pillow's float-mode bicubic, which torch's antialiased bicubic
        # follows to about 1e-5 per pixel; this test model amplifies that to about 1e-4 of its 1-5 scale.
        assert scorer(image).item() == pytest.approx(reference(image[0])["score"], abs=5e-4)


def test_pixel_gradients_with_as_loss_and_a_grad_input_only(scorer, images):
    weights = {name: param.clone() for name, param in scorer.model.state_dict().items()}
    image = pixels(images[0]).requires_grad_()
    score = scorer(image, as_loss=True)
    assert score.requires_grad
    score.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert all(param.grad is None and not param.requires_grad for param in scorer.model.parameters())
    assert all(torch.equal(weights[name], param) for name, param in scorer.model.state_dict().items())

    with torch.no_grad():  # as_loss=True keeps the graph inside no_grad too
        assert scorer(pixels(images[0]).requires_grad_(), as_loss=True).requires_grad
    assert scorer(pixels(images[0]).requires_grad_()).requires_grad
    plain = scorer(pixels(images[0]))
    assert not plain.requires_grad and plain.grad_fn is None
    assert plain.item() == pytest.approx(score.item(), abs=1e-6)


def test_optimising_the_score_of_a_blurred_image_raises_it(scorer, images):
    # With random weights the direction of "quality" is arbitrary: what must hold is that gradient steps on the
    # pixels move the score the way the loss asks.
    blurred = F.avg_pool2d(pixels(images[1]), kernel_size=5, stride=1, padding=2, count_include_pad=False)
    restored = blurred.clone().requires_grad_()
    optimizer = torch.optim.Adam([restored], lr=0.01)
    sign = 1.0 if scorer.lower_better else -1.0
    scores = []
    for _ in range(4):
        score = scorer(restored.clamp(0, 1), as_loss=True)
        scores.append(score.item())
        optimizer.zero_grad()
        (sign * score.mean()).backward()
        optimizer.step()
    final = scorer(restored.detach().clamp(0, 1)).item()
    assert final > scores[0] + 0.01
    assert scores == sorted(scores)


def test_direction_range_and_a_model_object_in_bfloat16(checkpoint, images, expected):
    from conftest import MPIQEModelTester

    scorer = MPIQEScorer(checkpoint)
    assert scorer.lower_better is False and scorer.score_range == (1.0, 5.0)

    dmos = MPIQEModelTester().model(mos_min=0.0, mos_max=100.0, mos_higher_is_better=False)
    dmos_scorer = MPIQEScorer(dmos, dtype=torch.bfloat16)
    assert dmos_scorer.lower_better is True and dmos_scorer.score_range == (0.0, 100.0)
    assert dmos_scorer.model is dmos and not any(param.requires_grad for param in dmos.parameters())
    # bfloat16 on the CPU, the score head in float32 so that scores keep float32's resolution
    assert dmos.clip.dtype == torch.bfloat16 and dmos.score_head.dense.weight.dtype == torch.float32
    score = dmos_scorer(pixels(images[0]))
    assert score.dtype == torch.float32 and torch.isfinite(score).all()


def test_bad_inputs_raise_one_clear_error(scorer, images):
    image = pixels(images[0])
    with pytest.raises(ValueError, match=r"\(batch_size, 3, height, width\).*images\[None\]"):
        scorer(image[0])
    with pytest.raises(ValueError, match="float tensor"):
        scorer((image * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"in \[0, 1\], got values in \[0, 2.*divide 0..255 values by 255"):
        scorer(image * 255)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        scorer(torch.full_like(image, float("nan")))
    with pytest.raises(ValueError, match="one float tensor"):
        scorer([image[0], image[0]])
    assert scorer([]).shape == (0,)  # as the pipeline answers [] with []
    with pytest.raises(ValueError, match="as_loss=True needs the pixels as a float tensor"):
        scorer(images[0], as_loss=True)
    with pytest.raises(ValueError, match=r"no image column 'image' \(its columns: id, picture\).*image_column="):
        scorer({"id": np.arange(1), "picture": np.array(images[:1])})
    with pytest.raises(TypeError, match="MPIQEModel, a local folder or a Hub repo id"):
        MPIQEScorer(42)
    with pytest.raises(ValueError, match="num_crops must be a positive int, got 0"):
        MPIQEScorer("/nonexistent/model", num_crops=0)
    with pytest.raises(ValueError, match="as_loss=True needs the pixels as a float tensor.*got dict"):
        scorer({"image": np.array(images[:1])}, as_loss=True)


def test_datasets_map_batched(checkpoint, images):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    jpegs = []
    for path in images:
        buffer = io.BytesIO()
        Image.open(path).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    expected = pipeline(PIPELINE_TASK, model=checkpoint)(jpegs)
    features = Features({"image": ImageFeature(), "id": Value("int64")})
    dataset = Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in jpegs], "id": [0, 1, 2]}, features
    )
    scored = dataset.map(MPIQEScorer(checkpoint, return_labels=True), batched=True, batch_size=2)
    assert scored.column_names == ["image", "id", "score", *LABELS]
    assert scored["score"] == pytest.approx(scores_of(expected), abs=1e-5)
    for key in LABELS:
        assert scored[key] == [result[key] for result in expected]

    # undecoded, as docs/usage.md advises: {"bytes", "path"} dicts, which datasets writes back as they were
    undecoded = dataset.cast_column("image", ImageFeature(decode=False))
    scored = undecoded.map(MPIQEScorer(checkpoint, score_column="quality_score"), batched=True, batch_size=3)
    assert scored["quality_score"] == pytest.approx(scores_of(expected), abs=1e-5)
    assert scored.data.column("image").equals(undecoded.data.column("image"))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_map_batches(local_ray, checkpoint, images, expected):
    """One Ray actor on decoded arrays of several sizes (each actor imports torch: one keeps the suite short)."""
    items = [{"id": index, "image": np.asarray(load_image(path))} for index, path in enumerate(images)]
    scored = local_ray.data.from_items(items).map_batches(
        MPIQEScorer,
        fn_constructor_kwargs={"model": checkpoint, "return_labels": True},
        concurrency=1,
        num_cpus=1,
        batch_size=2,
    )
    rows = sorted(scored.take_all(), key=lambda row: row["id"])
    assert set(rows[0]) == {"id", "image", "score", *LABELS}
    assert [row["score"] for row in rows] == pytest.approx(scores_of(expected), abs=1e-5)
    for key in LABELS:
        assert [row[key] for row in rows] == [result[key] for result in expected]


def test_dict_batches_of_bytes_and_paths(scorer, images, expected):
    """The other columns a Ray batch may hold, each handed over as a numpy object array."""
    for column in (np.array([open(path, "rb").read() for path in images], dtype=object), np.array(images)):
        batch = {"image": column}
        assert scorer(batch)["score"].tolist() == pytest.approx(scores_of(expected), abs=1e-5)


def test_a_dict_batch_of_one_size_arrays(scorer, images):
    """Ray's batch form for images of one size: a `(batch_size, height, width, 3)` uint8 array."""
    corners = np.stack([np.asarray(load_image(path))[:30, :30] for path in images])
    batch = {"image": corners, "id": np.arange(3)}
    reference = pipeline(PIPELINE_TASK, model=scorer.model, image_processor=scorer.processor)(list(corners))
    assert scorer(batch) is batch and set(batch) == {"image", "id", "score"}
    assert batch["score"].dtype == np.float32
    assert batch["score"].tolist() == pytest.approx(scores_of(reference), abs=1e-5)
