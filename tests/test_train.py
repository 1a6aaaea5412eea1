"""Tests of examples/train.py and mpiqe_hf.training: tiny random CLIP, CPU, a few steps each."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import MPIQEModelTester, save_tiny_clip
from hub_server import hub_endpoint  # noqa: F401  (the fixture)
from PIL import Image, ImageFilter
from safetensors.torch import load_file

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import load_iqa_dataset
from mpiqe_hf.image_utils_mpiqe import load_image
from mpiqe_hf.training import (
    EpochShuffleSampler,
    IQATransform,
    ShuffledCropBatches,
    collate_iqa_batch,
    evaluate_model,
    iqa_split,
    keep_samples,
    make_samples,
    transforms,
)


ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"mpiqe_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and HfArgumentParser resolve the annotations through it
    spec.loader.exec_module(module)
    return module


train_script = _load_script("train")


def write_blur_folder(folder, contents=4, levels=4, size=40, seed=0, bad_rows=()):
    """A metadata.csv folder: random textures (one per content) blurred at `levels` strengths; MOS falls with blur."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for content in range(contents):
        base = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for level in range(levels):
            name = f"images/c{content}_l{level}.png"
            base.filter(ImageFilter.GaussianBlur(radius=1.5 * level)).save(folder / name)
            rows.append([name, f"{5.0 - level:.2f}", "", "blur" if level else "", f"c{content}"])
    rows.extend(bad_rows)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "mos", "scene", "distortion", "content_id"])
        writer.writerows(rows)
    return folder


def tiny_args(tiny_clip, output_dir, *extra, steps=2, warmup_steps=1):
    """train.py options for a tiny run; `steps=None` trains for `--num_train_epochs` (in `extra`). The decoder keeps
    the 512-wide image-text space of the Hub-shaped CLIP with a narrow feed-forward block (64 instead of 2,048), for
    speed; an `extra` `--config_overrides` replaces that one."""
    args = [
        "--clip_model_name_or_path",
        tiny_clip,
        "--config_overrides",
        "decoder_intermediate_size=64",
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--num_crops",
        "2",
        "--dataloader_num_workers",
        "0",
        "--learning_rate",
        "1e-3",
        "--seed",
        "3",
    ]
    if steps is not None:
        args += ["--max_train_steps", str(steps)]
    if warmup_steps is not None:
        args += ["--num_warmup_steps", str(warmup_steps)]
    return args + list(extra)


def trainable_state(directory):
    model = MPIQEModel.from_pretrained(directory)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_train_on_embedded_synthetic_saves_loadable_model(tiny_clip, synthetic_cache, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        results = train_script.main(
            tiny_args(
                tiny_clip,
                out,
                "--cache_dir",
                synthetic_cache,
                "--max_train_samples",
                "12",
                "--max_eval_samples",
                "8",
                "--checkpointing_steps",
                "epoch",
                warmup_steps=None,
            )
        )
    # 5 warm-up epochs of 6 steps would be 30 steps of a 2-step run: clamped to the paper's 5/30 of it
    assert "The warm-up (30 steps) is not shorter than the run (2 steps)" in caplog.text
    assert "Warm-up clamped to 0 steps" in caplog.text
    assert json.loads((out / "training_args.json").read_text())["num_warmup_steps"] == 0
    # the run says what it will cost before it starts
    assert (
        "12 images x 2 sample(s) = 24 samples an epoch (per_crop); 1 epoch(s) of 6 optimizer steps = 2 steps"
        in caplog.text
    )
    assert "4 samples (4 crops) a step" in caplog.text and "cost: about" in caplog.text
    assert "under-fits" not in caplog.text  # its own learning rate: no advice
    model = MPIQEModel.from_pretrained(out)
    assert (model.config.mos_min, model.config.mos_max, model.config.mos_higher_is_better) == (1.0, 5.0, True)
    assert model.config.score_loss_weight == 0.5 and model.config.visual_prompt_depth == 2
    processor = MPIQEImageProcessor.from_pretrained(out)
    assert dict(processor.crop_size) == {"height": 30, "width": 30} and processor.num_crops == 2
    saved = json.loads((out / "all_results.json").read_text())
    for key in (
        "srcc",
        "plcc",
        "plcc_logistic",
        "krcc",
        "rmse",
        "train_loss",
        "step",
        "best_srcc",
        "best_epoch",
        "num_train_samples",
        "num_eval_samples",
    ):
        assert key in saved, key
    assert saved["step"] == 2 and saved["num_train_samples"] == 12 and saved["num_eval_samples"] == 8
    assert saved["dataset"] == "synthetic" and saved["split_protocol"] == "paper"
    assert results["srcc"] == saved["srcc"]
    assert (out / "best" / "model.safetensors").is_file() and (out / "epoch_0" / "training_state.json").is_file()
    # the saved model scores images end to end
    pixel_values = processor(Image.new("RGB", (40, 36), (90, 20, 200)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=pixel_values).score).all()


def test_resume_from_checkpoint_continues_exactly(tiny_clip, synthetic_cache, tmp_path):
    # 12 images x 2 crops in batches of 8 crops = 3 steps per epoch: the run crosses an epoch boundary (and its
    # evaluation), and the checkpoint after step 2 is in the middle of epoch 0.
    common = [
        "--cache_dir",
        synthetic_cache,
        "--max_train_samples",
        "12",
        "--max_eval_samples",
        "6",
        "--per_device_train_batch_size",
        "8",
    ]
    straight = tmp_path / "straight"
    train_script.main(tiny_args(tiny_clip, straight, *common, "--checkpointing_steps", "2", steps=4))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_2", resumed / "step_2")
    state = json.loads((resumed / "step_2" / "training_state.json").read_text())
    assert state["completed_steps"] == 2 and state["epoch"] == 0 and state["batches_in_epoch"] == 2
    # the resumed run uses dataloader workers: crops and order must not depend on them
    train_script.main(
        tiny_args(
            tiny_clip,
            resumed,
            *common,
            "--resume_from_checkpoint",
            "latest",
            "--dataloader_num_workers",
            "2",
            "--checkpointing_steps",
            "2",
            steps=4,
        )
    )
    a, b = trainable_state(straight), trainable_state(resumed)
    before = load_file(straight / "step_2" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    assert any(not torch.allclose(a[name], before[name]) for name in a)  # it did train after the checkpoint
    # the optimizer and scheduler states after step 4 agree too
    opt_a, opt_b = (torch.load(d / "step_4" / "optimizer.bin", weights_only=False) for d in (straight, resumed))
    for key, value in opt_a["state"].items():
        assert value["step"] == opt_b["state"][key]["step"]
        assert torch.allclose(value["exp_avg"], opt_b["state"][key]["exp_avg"], atol=1e-6, rtol=0)
    sched_a, sched_b = (torch.load(d / "step_4" / "scheduler.bin", weights_only=False) for d in (straight, resumed))
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 4 and sched_a["_last_lr"] == sched_b["_last_lr"]
    resumed_results = json.loads((resumed / "all_results.json").read_text())
    straight_results = json.loads((straight / "all_results.json").read_text())
    assert resumed_results["step"] == straight_results["step"] == 4
    assert resumed_results["srcc"] == pytest.approx(straight_results["srcc"], abs=1e-6)
    # resuming the finished run from its last checkpoint trains nothing more
    again = train_script.main(
        tiny_args(
            tiny_clip, straight, *common, "--resume_from_checkpoint", "latest", "--checkpointing_steps", "1", steps=4
        )
    )
    assert again["step"] == 4 and sorted(p.name for p in straight.glob("step_*")) == ["step_2", "step_4"]
    after = trainable_state(straight)
    assert all(torch.equal(after[name], a[name]) for name in a)


def test_adapter_only_checkpoints_resume_exactly_and_the_limit_keeps_the_newest(tiny_clip, synthetic_cache, tmp_path):
    common = [
        "--cache_dir",
        synthetic_cache,
        "--max_train_samples",
        "12",
        "--max_eval_samples",
        "6",
        "--per_device_train_batch_size",
        "8",
    ]
    full = tmp_path / "full"
    train_script.main(tiny_args(tiny_clip, full, *common, "--checkpointing_steps", "2", steps=4))
    straight = tmp_path / "straight"
    train_script.main(
        tiny_args(
            tiny_clip,
            straight,
            *common,
            "--save_adapter_only",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "2",
            steps=4,
        )
    )
    # only the newest 2 of the 4 checkpoints are kept
    assert sorted(p.name for p in straight.glob("step_*")) == ["step_3", "step_4"]
    # a checkpoint holds the trained weights, the optimizer, scheduler and RNG states, not the frozen CLIP
    saved = load_file(straight / "step_4" / "model.safetensors")
    assert saved and not any(key.startswith("clip.") for key in saved)
    files = {p.name for p in (straight / "step_4").iterdir()}
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
    # (the tiny CLIP is small beside MP-IQE's parts; ViT-B/16's 600 MB are the saving in a real run)
    clip_bytes = sum(t.numel() * t.element_size() for t in MPIQEModel.from_pretrained(full).clip.state_dict().values())
    size = (straight / "step_4" / "model.safetensors").stat().st_size
    assert (full / "step_4" / "model.safetensors").stat().st_size - size >= 0.99 * clip_bytes
    # the final model and best/ are adapters of the base CLIP
    for folder in (straight, straight / "best"):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "mpiqe_adapter.safetensors"} <= names and "model.safetensors" not in names
    a = trainable_state(straight)
    assert all(torch.allclose(a[name], value, atol=1e-6, rtol=0) for name, value in trainable_state(full).items())
    # resuming from the adapter-only checkpoint after step 3 gives the uninterrupted run's weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_3", resumed / "step_3")
    train_script.main(
        tiny_args(tiny_clip, resumed, *common, "--save_adapter_only", "--resume_from_checkpoint", "latest", steps=4)
    )
    b = trainable_state(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[name], b[name], atol=1e-6, rtol=0) for name in a)
    # an adapter needs a pretrained base CLIP to be loaded on
    with pytest.raises(ValueError, match="--save_adapter_only saves the model as an adapter of a pretrained base"):
        train_script.main(
            tiny_args(
                tiny_clip, tmp_path / "random", *common, "--clip_config_name", "tiny", "--save_adapter_only", steps=1
            )
        )


def test_gradient_accumulation_ends_each_epoch_on_a_step_and_resumes_exactly(tiny_clip, synthetic_cache, tmp_path):
    # 10 images x 2 crops in batches of at most 4 crops: 5 batches, rounded up to 6 for 2 accumulation steps (crops
    # spread 4, 4, 3, 3, 3, 3): 3 optimizer steps an epoch, 6 in 2 epochs
    common = [
        "--cache_dir",
        synthetic_cache,
        "--max_train_samples",
        "10",
        "--max_eval_samples",
        "6",
        "--gradient_accumulation_steps",
        "2",
        "--num_train_epochs",
        "2",
        "--checkpointing_steps",
        "1",
    ]
    straight = tmp_path / "straight"
    results = train_script.main(tiny_args(tiny_clip, straight, *common, steps=None))
    assert results["steps_per_epoch"] == 3 and results["step"] == 6 and results["batches_per_process"] == [12]
    state = json.loads((straight / "step_4" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 2)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_4", resumed / "step_4")
    train_script.main(tiny_args(tiny_clip, resumed, *common, "--resume_from_checkpoint", "latest", steps=None))
    a, b = trainable_state(straight), trainable_state(resumed)
    assert all(torch.allclose(a[name], b[name], atol=1e-6, rtol=0) for name in a)


def test_train_on_metadata_folders(tiny_clip, tmp_path):
    train_dir = write_blur_folder(tmp_path / "train", contents=3, seed=1)
    val_dir = write_blur_folder(tmp_path / "val", contents=2, seed=2)
    out = tmp_path / "run"
    results = train_script.main(
        tiny_args(
            tiny_clip,
            out,
            "--train_dir",
            str(train_dir),
            "--validation_dir",
            str(val_dir),
            "--mos_range",
            "1",
            "5",
            "--max_image_size",
            "36",
        )
    )
    assert results["split_protocol"] == "none" and results["num_train_samples"] == 12
    assert results["num_eval_samples"] == 8
    model = MPIQEModel.from_pretrained(out)
    assert (model.config.mos_min, model.config.mos_max) == (1.0, 5.0)
    # The scale it trained at goes with the model, for the pipeline and mpiqe-score.
    assert MPIQEImageProcessor.from_pretrained(out).max_image_size == 36


@pytest.mark.parametrize(
    "bad_row, field",
    [
        (["images/missing.png", "3.0", "", "", "x"], "image"),
        (["images/c0_l0.png", "nan", "", "", "x"], "mos"),
        (["images/c0_l1.png", "3.0", "nowhere", "", "x"], "scene"),
        (["images/c0_l2.png", "3.0", "", "sparkles", "x"], "distortion"),
    ],
)
def test_bad_rows_name_file_and_line(tiny_clip, tmp_path, bad_row, field):
    train_dir = write_blur_folder(tmp_path / "train", contents=2, levels=3, bad_rows=[bad_row])
    with pytest.raises(ValueError, match=rf"metadata.csv, line 8, field '{field}'"):
        train_script.main(tiny_args(tiny_clip, tmp_path / "run", "--train_dir", str(train_dir)))


def test_the_papers_learning_rate_on_a_narrow_clip_is_told_it_will_under_fit(synthetic_cache, tmp_path, caplog):
    narrow_clip = save_tiny_clip(tmp_path / "narrow_clip", projection_dim=32)
    with caplog.at_level("WARNING"):
        train_script.main(
            tiny_args(
                narrow_clip,
                tmp_path / "run",
                "--cache_dir",
                synthetic_cache,
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "4",
                "--learning_rate",
                "3e-5",
            )
        )
    assert (
        "The paper's learning rate 3e-05 is set for ViT-B/16, whose image-text space is 512 wide; this CLIP's is "
        "32 wide" in caplog.text
    )
    assert "Try --learning_rate 2e-3" in caplog.text  # 1e-3 at width 64, doubled at 32


def test_the_papers_learning_rate_at_vit_b16_width_gets_no_advice():
    advice = train_script.narrow_text_space_advice
    assert advice(3e-5, 512) is None and advice(3e-5, 768) is None
    assert advice(1e-4, 64) is None  # the user's own learning rate
    assert "Try --learning_rate 1e-3" in advice(3e-5, 64) and "Try --learning_rate 3e-4" in advice(3e-5, 256)


def test_skip_bad_samples_reports_once_and_trains(tiny_clip, tmp_path, caplog):
    train_dir = write_blur_folder(
        tmp_path / "train",
        contents=3,
        levels=3,
        bad_rows=[["images/missing.png", "3.0", "", "", "m"], ["images/broken.png", "2.0", "", "", "b"]],
    )
    (train_dir / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        results = train_script.main(
            tiny_args(tiny_clip, tmp_path / "run", "--train_dir", str(train_dir), "--skip_bad_samples")
        )
    skipped = "\n".join(results["skipped_samples"])
    assert "missing.png" in skipped and "broken.png" in skipped and "line 11" in skipped and "line 12" in skipped
    # One report of the skipped rows, from the script: neither the library's warning nor a second log line.
    reports = caplog.text.count("line 11, field 'image'") + sum("line 11" in str(w.message) for w in caught)
    assert reports == 1


def test_corrupt_image_at_decode_time_names_the_file(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=2, levels=2)
    (folder / "images" / "c1_l1.png").write_bytes(b"garbage")  # after loading: only decoding can notice
    ds = load_iqa_dataset(str(folder))
    config = MPIQEModelTester().config()
    classes = dict(scene_classes=config.scene_classes, distortion_classes=config.distortion_classes)
    processor = MPIQEImageProcessor(crop_size=30, num_crops=2)
    strict = iqa_split(ds, range(4), IQATransform(ds, processor, random_crops=False, **classes))
    with pytest.raises(ValueError, match=r"c1_l1\.png"):
        strict[3]
    skipping = iqa_split(
        ds, range(4), IQATransform(ds, processor, random_crops=False, skip_bad_samples=True, **classes)
    )
    batch = collate_iqa_batch(skipping.__getitems__([0, 1, 2, 3]))
    assert batch["pixel_values"].shape == (3, 2, 3, 30, 30)
    assert batch["index"].tolist() == [0, 1, 2] and len(batch["skipped"]) == 1 and "c1_l1.png" in batch["skipped"][0]


def test_per_crop_samples_and_evaluate_model(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=2, levels=3)
    ds = load_iqa_dataset(str(folder))
    model = MPIQEModelTester().model()
    config = model.config
    classes = dict(scene_classes=config.scene_classes, distortion_classes=config.distortion_classes)
    processor = MPIQEImageProcessor(crop_size=30, num_crops=2)
    transform = IQATransform(ds, processor, random_crops=True, seed=5, **classes)
    # per-crop: every image 3 times, each visit one crop of its own
    train = iqa_split(ds, [1, 4], transform, visits=3)
    plain = train.with_format(None)
    assert len(train) == 6 and plain["row"] == [1, 1, 1, 4, 4, 4] and plain["visit"] == [0, 1, 2, 0, 1, 2]
    items = train.__getitems__(list(range(6)))
    assert all(item["pixel_values"].shape == (1, 3, 30, 30) for item in items)
    assert [item["index"].item() for item in items] == [1, 1, 1, 4, 4, 4]
    assert not torch.equal(items[0]["pixel_values"], items[1]["pixel_values"])
    assert items[0]["distortion_labels"].item() == config.distortion_classes.index("blur")
    assert items[0]["mos"].item() == pytest.approx(ds[1]["mos_normalized"])
    assert train[0]["distortion_labels"] == items[0]["distortion_labels"]
    # reproducible within an epoch, different in the next
    assert torch.equal(train[1]["pixel_values"], items[1]["pixel_values"])
    transform.set_epoch(1)
    assert not torch.equal(train[1]["pixel_values"], items[1]["pixel_values"])
    # per-image: one sample holds the image's crops
    per_image = iqa_split(ds, [0, 1], IQATransform(ds, processor, random_crops=True, crops_per_sample=2, **classes))
    assert per_image[0]["pixel_values"].shape == (2, 3, 30, 30) and per_image[0]["distortion_labels"] == -100
    assert per_image[0]["scene_labels"].sum() == 0

    evaluation = iqa_split(ds, range(6), IQATransform(ds, processor, random_crops=False, **classes))
    loader = torch.utils.data.DataLoader(evaluation, batch_size=4, collate_fn=collate_iqa_batch)
    metrics = evaluate_model(model, loader)
    assert metrics["num_samples"] == 6 and -1.0 <= metrics["srcc"] <= 1.0 and "plcc" in metrics


def crop_stream(ds, indices, seed=5, visits=3, batch_size=4, buffer_size=8, workers=0, epoch=1, **transform_kwargs):
    config = MPIQEModelTester().config()
    transform = IQATransform(
        ds,
        MPIQEImageProcessor(crop_size=30),
        random_crops=True,
        seed=seed,
        visits=visits,
        scene_classes=config.scene_classes,
        distortion_classes=config.distortion_classes,
        **transform_kwargs,
    )
    transform.set_epoch(epoch)
    images = make_samples(indices).with_transform(transform)
    sampler = EpochShuffleSampler(len(images), seed=seed)
    loader = torch.utils.data.DataLoader(
        images, sampler=sampler, batch_size=2, collate_fn=keep_samples, num_workers=workers
    )
    stream = ShuffledCropBatches(
        loader, sampler, visits=visits, batch_size=batch_size, buffer_size=buffer_size, seed=seed
    )
    stream.set_epoch(epoch)
    return stream


def test_shuffled_crop_batches_decode_each_image_once_and_hold_every_visit_once(tmp_path, monkeypatch):
    folder = write_blur_folder(tmp_path / "data", contents=3, levels=4, size=64)
    ds = load_iqa_dataset(str(folder))
    indices = list(range(12))
    decoded = []
    original = transforms.load_image
    monkeypatch.setattr(transforms, "load_image", lambda image: decoded.append(image["path"]) or original(image))
    stream = crop_stream(ds, indices, horizontal_flip=True)
    batches = list(stream)
    # 12 images x 3 visits = 36 crops in 9 batches of 4; each image decoded once (per-visit samples: 36 decodes)
    assert len(decoded) == 12 and len(set(decoded)) == 12
    assert len(batches) == len(stream) == 9
    assert all(b["pixel_values"].shape == (4, 1, 3, 30, 30) and b["skipped"] == [] for b in batches)
    # each crop is the per-visit sample's crop (same seed, same flip), and each (image, visit) comes exactly once
    config = MPIQEModelTester().config()
    per_visit = IQATransform(
        ds,
        MPIQEImageProcessor(crop_size=30),
        random_crops=True,
        seed=5,
        horizontal_flip=True,
        scene_classes=config.scene_classes,
        distortion_classes=config.distortion_classes,
    )
    per_visit.set_epoch(1)
    samples = iqa_split(ds, indices, per_visit, visits=3)
    expected = {}
    for item, row, visit in zip(samples.__getitems__(list(range(36))), np.repeat(indices, 3), [0, 1, 2] * 12):
        expected[item["pixel_values"].numpy().tobytes()] = (int(row), visit, item["mos"].item())
    assert len(expected) == 36
    seen = []
    for batch in batches:
        for crop, row, mos in zip(batch["pixel_values"], batch["index"].tolist(), batch["mos"].tolist()):
            found = expected[crop.numpy().tobytes()]
            assert found[0] == row and found[2] == pytest.approx(mos)
            seen.append(found[:2])
    assert sorted(seen) == sorted((row, visit) for row in indices for visit in range(3))
    # batches mix images: drawn at random from a buffer of 8 crops, not in arrival order (at most 2 images a batch)
    assert all(len(set(b["index"].tolist())) > 1 for b in batches)
    assert max(len(set(b["index"].tolist())) for b in batches) >= 3
    # the same seed and epoch give the same batches, whatever the number of workers; another epoch others
    again = list(crop_stream(ds, indices, horizontal_flip=True, workers=2))
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(batches, again))
    other = list(crop_stream(ds, indices, horizontal_flip=True, epoch=2))
    assert not torch.equal(batches[0]["pixel_values"], other[0]["pixel_values"])
    # resuming at batch 5 gives the rest, decoding only the images whose crops are still to come
    decoded.clear()
    rest = list(stream.iterate(5))
    assert len(rest) == 4 and all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(batches[5:], rest))
    assert len(decoded) < 12 and list(stream.iterate(9)) == []


def test_shuffled_crop_batches_options_and_bad_images(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=2, levels=3, size=40)
    (folder / "images" / "c1_l1.png").write_bytes(b"garbage")
    ds = load_iqa_dataset(str(folder), verify_images=False)
    # the epoch's batch count is rounded up to a multiple of the accumulation steps, spreading the crops evenly
    stream = crop_stream(ds, list(range(6)), visits=2, batch_size=4, buffer_size=4, skip_bad_samples=True)
    stream.batches_multiple_of = 2
    batches = list(stream)
    assert [len(b["index"]) + len(b["skipped"]) for b in batches] == [3, 3, 3, 3]
    # the bad image's two crops are dropped from their batches and listed
    skipped = [error for b in batches for error in b["skipped"]]
    assert len(skipped) == 2 and all("c1_l1.png" in error for error in skipped)
    with pytest.raises(ValueError, match=r"shuffle buffer \(2 crops\) must hold at least a batch \(4\)"):
        crop_stream(ds, [0], batch_size=4, buffer_size=2)
    with pytest.raises(ValueError, match="visits=2 needs random_crops=True, crops_per_sample=1"):
        crop_stream(ds, [0], visits=2, crops_per_sample=2)


@pytest.mark.parametrize("crop_sampling, steps_per_epoch", [("per_crop", 3), ("per_image", 2)])
def test_steps_per_epoch_count_crops(tiny_clip, synthetic_cache, tmp_path, crop_sampling, steps_per_epoch):
    # 6 images x 2 crops in batches of 5 crops: ceil(12 / 5) = 3 steps an epoch; per image: ceil(6 / 5) = 2
    out = tmp_path / "run"
    results = train_script.main(
        tiny_args(
            tiny_clip,
            out,
            "--cache_dir",
            synthetic_cache,
            "--max_train_samples",
            "6",
            "--max_eval_samples",
            "4",
            "--crop_sampling",
            crop_sampling,
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "5",
            "--checkpointing_steps",
            "1",
            steps=None,
        )
    )
    assert results["step"] == steps_per_epoch
    assert sorted(p.name for p in out.glob("step_*")) == sorted(f"step_{k}" for k in range(1, steps_per_epoch + 1))
    for term in ("train_loss", "train_scene_loss", "train_distortion_loss", "train_score_loss"):
        assert term in results
    assert results["train_score_loss"] > 0 and results["train_distortion_loss"] > 0
    assert results["dropped_samples"] == 0


def test_accelerate_launch_subprocess(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "launched"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "examples" / "train.py"),
        *tiny_args(
            tiny_clip,
            out,
            "--cache_dir",
            synthetic_cache,
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "6",
            "--checkpointing_steps",
            "1",
            "--with_tracking",
            "--report_to",
            "tensorboard",
        ),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (out / "step_1").is_dir() and (out / "step_2").is_dir()
    assert json.loads((out / "all_results.json").read_text())["step"] == 2
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    MPIQEModel.from_pretrained(out)


def test_offline_without_clip_fails_fast_with_one_message(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from mpiqe_hf.model_sources import ModelSourceUnavailable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "never"
    with pytest.raises(ModelSourceUnavailable) as raised:
        train_script.main(["--output_dir", str(out), "--clip_model_name_or_path", "openai/clip-vit-base-patch16"])
    message = str(raised.value)
    assert "'openai/clip-vit-base-patch16'" in message and "HF_HUB_OFFLINE" in message
    assert "--clip_config_name tiny" in message and "local folder" in message and "\n" not in message
    assert not out.exists()
    with pytest.raises(ModelSourceUnavailable, match="no such folder"):
        train_script.main(["--output_dir", str(out), "--clip_model_name_or_path", str(tmp_path / "nowhere")])
    assert not out.exists()


def test_missing_labels_turn_loss_terms_off_loudly(tiny_clip, tmp_path, caplog):
    # the blur folder has distortion labels but no scene labels
    train_dir = write_blur_folder(tmp_path / "train", contents=3, seed=1)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        results = train_script.main(tiny_args(tiny_clip, out, "--train_dir", str(train_dir), steps=1))
    assert "no scene labels: the scene loss is OFF" in caplog.text and "distortion loss is OFF" not in caplog.text
    assert results["loss_terms"] == {"scene": False, "distortion": True, "score": True}
    recorded = json.loads((out / "training_args.json").read_text())
    assert recorded["loss_terms"]["scene"] is False and recorded["split_protocol"] == "paper"
    assert recorded["split_description"].startswith("paper: random 80/20 split 1 of 10")


def test_undecodable_image_during_training_is_dropped_and_counted(tiny_clip, tmp_path):
    train_dir = write_blur_folder(tmp_path / "train", contents=3, levels=3, seed=1)
    val_dir = write_blur_folder(tmp_path / "val", contents=1, levels=3, seed=2)
    (train_dir / "images" / "c1_l1.png").write_bytes(b"garbage")  # found only when decoded: verification is off
    results = train_script.main(
        tiny_args(
            tiny_clip,
            tmp_path / "run",
            "--train_dir",
            str(train_dir),
            "--validation_dir",
            str(val_dir),
            "--no_verify_images",
            "--num_train_epochs",
            "1",
            steps=None,
        )
    )
    # 9 images x 2 crops = 18 samples, the bad image's 2 visits dropped
    assert results["dropped_samples"] == 2 and all("c1_l1.png" in e for e in results["dropped_sample_errors"])
    assert results["step"] == results["steps_per_epoch"] == 5


def test_too_few_validation_images_are_refused_before_training(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="validation split has 2 image"):
        train_script.main(
            tiny_args(
                tiny_clip,
                out,
                "--cache_dir",
                synthetic_cache,
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "2",
                steps=1,
            )
        )
    assert not out.exists()  # nothing trained, nothing written


def test_fine_tune_a_trained_model_and_config_overrides(tiny_clip, synthetic_cache, tmp_path):
    source = tmp_path / "source"
    train_script.main(
        tiny_args(
            tiny_clip,
            source,
            "--cache_dir",
            synthetic_cache,
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "4",
            "--config_overrides",
            "text_prompt_length=3,score_loss_weight=0.25",
            steps=1,
        )
    )
    trained = MPIQEModel.from_pretrained(source)
    assert trained.config.text_prompt_length == 3 and trained.config.score_loss_weight == 0.25
    with pytest.raises(ValueError, match="no_such_field"):
        train_script.config_overrides("no_such_field=1", trained.config.clip_config)
    # fine-tune on a folder scored 0..100: the trained prompts are the start, the score range is the new data's
    folder = write_blur_folder(tmp_path / "mine", contents=3, seed=4)
    out = tmp_path / "tuned"
    train_script.main(
        tiny_args(
            tiny_clip,
            out,
            "--model_name_or_path",
            str(source),
            "--train_dir",
            str(folder),
            "--mos_range",
            "0",
            "100",
            "--learning_rate",
            "0",
            steps=1,
        )
    )
    tuned = MPIQEModel.from_pretrained(out)
    assert (tuned.config.mos_min, tuned.config.mos_max) == (0.0, 100.0) and tuned.config.text_prompt_length == 3
    before, after = trainable_state(source), trainable_state(out)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_flips_and_downscaling_of_training_crops(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=1, levels=2, size=40)
    ds = load_iqa_dataset(str(folder))
    config = MPIQEModelTester().config()
    classes = dict(scene_classes=config.scene_classes, distortion_classes=config.distortion_classes)
    processor = MPIQEImageProcessor(crop_size=30, num_crops=1)
    plain = IQATransform(ds, processor, random_crops=True, crops_per_sample=16, **classes)
    flipping = IQATransform(ds, processor, random_crops=True, crops_per_sample=16, horizontal_flip=True, **classes)
    a = iqa_split(ds, [0], plain)[0]["pixel_values"]
    b = iqa_split(ds, [0], flipping)[0]["pixel_values"]
    same = [torch.equal(x, y) for x, y in zip(a, b)]
    flipped = [torch.equal(x.flip(-1), y) for x, y in zip(a, b)]
    assert all(s or f for s, f in zip(same, flipped)) and 0 < sum(flipped) < 16
    sizes = []
    original = processor.preprocess

    def recording(images, *args, **kwargs):
        sizes.append(images.size)
        return original(images, *args, **kwargs)

    processor.preprocess = recording
    iqa_split(ds, [0], IQATransform(ds, processor, random_crops=True, **classes))[0]
    processor.max_image_size = 32  # the bound lives in the processor, which training saves with the model
    bounded = iqa_split(ds, [0], IQATransform(ds, processor, random_crops=False, **classes))[0]["pixel_values"]
    assert sizes == [(40, 40), (32, 32)]
    # the transform's one downscale gives the pixels the processor's own would (what scoring does)
    image = load_image(ds.cast_column("image", datasets.Image(decode=False))[0]["image"])
    processor.preprocess = original
    torch.testing.assert_close(bounded, processor(image, return_tensors="pt")["pixel_values"][0], atol=1e-6, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    tester = MPIQEModelTester()
    pixel_values, mos = tester.pixel_values(), torch.tensor([0.2, 0.7])
    calls = []

    def gradients(checkpointing):
        model = tester.model().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            for module in model.modules():
                if getattr(module, "gradient_checkpointing", False):
                    inner = module._gradient_checkpointing_func
                    module._gradient_checkpointing_func = lambda *a, inner=inner, **k: (
                        calls.append(1) or inner(*a, **k)
                    )
        model(pixel_values=pixel_values, mos=mos).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients(False)
    checkpointed = gradients(True)
    assert len(calls) >= tester.vision_layers and plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_two_cpu_processes_with_torchrun(tiny_clip, synthetic_cache, tmp_path):
    """torchrun starts two processes; Accelerate runs them as one MULTI_CPU job over gloo."""
    common = [
        "--cache_dir",
        synthetic_cache,
        "--max_train_samples",
        "12",
        "--max_eval_samples",
        "6",
        "--per_device_train_batch_size",
        "3",
        "--num_train_epochs",
        "1",
        "--checkpointing_steps",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")

    def launch(out, *extra):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "examples" / "train.py"),
            *tiny_args(tiny_clip, out, *common, *extra, steps=None),
        ]
        completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return completed.stdout + completed.stderr

    straight = tmp_path / "straight"
    output = launch(straight)
    results = json.loads((straight / "all_results.json").read_text())
    # 12 images x 2 crops, 3 crops per process and step, 2 processes: ceil(24 / 6) = 4 optimizer steps
    assert results["num_processes"] == 2 and results["batches_per_process"] == [4, 4]
    assert results["steps_per_epoch"] == 4 and results["step"] == 4 and results["total_train_batch_size"] == 6
    assert output.count("***** Running training *****") == 1  # the main process reports, the other one is silent
    for k in range(1, 5):
        checkpoint = straight / f"step_{k}"
        assert len(list(checkpoint.glob("model*.safetensors"))) == 1
        assert sorted(p.name for p in checkpoint.glob("random_states_*")) == [
            "random_states_0.pkl",
            "random_states_1.pkl",
        ]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_2", resumed / "step_2")
    launch(resumed, "--resume_from_checkpoint", "latest")
    assert json.loads((resumed / "all_results.json").read_text())["step"] == 4
    a, b = trainable_state(straight), trainable_state(resumed)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name


def test_push_to_hub_uploads_the_model_with_its_results(hub_endpoint, tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "run"
    results = train_script.main(
        tiny_args(
            tiny_clip,
            out,
            "--cache_dir",
            synthetic_cache,
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "6",
            "--push_to_hub",
            "--hub_model_id",
            "user/mp-iqe-trained",
            steps=1,
        )
    )
    files = hub_endpoint.files("user/mp-iqe-trained")
    # the full checkpoint, as save_pretrained writes it (push_to_hub's default)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "handler.py"} <= set(files)
    assert not any(name.startswith(("step_", "best/", "adapter")) for name in files)
    import yaml

    card = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    metrics = {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert metrics["SRCC"] == round(results["srcc"], 4) and metrics["PLCC"] == round(results["plcc"], 4)
    # the card says how this run was trained, beside the paper's recipe
    assert (
        "This checkpoint's run: Adam, learning rate 0.001, 1 epoch(s) = 1 optimizer steps of 4 crops, per-crop "
        "samples; it departs from the paper's recipe in: learning rate, epochs."
    ) in files["README.md"].decode()
