"""Tests of examples/train.py and mpiqe_hf.training: tiny random CLIP, CPU, a few steps each."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import load_iqa_dataset
from mpiqe_hf.training import EpochShuffleSampler, IQATrainingDataset, collate_iqa_batch, evaluate_model

from conftest import MPIQEModelTester

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"mpiqe_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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


def tiny_args(tiny_clip, output_dir, *extra, steps=2):
    return [
        "--clip_model_name_or_path", tiny_clip,
        "--output_dir", str(output_dir),
        "--max_train_steps", str(steps),
        "--per_device_train_batch_size", "4",
        "--num_crops", "2",
        "--dataloader_num_workers", "0",
        "--num_warmup_steps", "1",
        "--learning_rate", "1e-3",
        "--seed", "3",
        *extra,
    ]


def trainable_state(directory):
    model = MPIQEModel.from_pretrained(directory)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_train_on_embedded_synthetic_saves_loadable_model(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "run"
    results = train_script.main(
        tiny_args(tiny_clip, out, "--cache_dir", synthetic_cache, "--max_train_samples", "12",
                  "--max_eval_samples", "8", "--checkpointing_steps", "epoch")
    )
    model = MPIQEModel.from_pretrained(out)
    assert (model.config.mos_min, model.config.mos_max, model.config.mos_higher_is_better) == (1.0, 5.0, True)
    assert model.config.score_loss_weight == 0.5 and model.config.visual_prompt_depth == 2
    processor = MPIQEImageProcessor.from_pretrained(out)
    assert dict(processor.crop_size) == {"height": 30, "width": 30} and processor.num_crops == 2
    saved = json.loads((out / "all_results.json").read_text())
    for key in ("srcc", "plcc", "plcc_logistic", "krcc", "rmse", "train_loss", "step", "best_srcc", "best_epoch",
                "num_train_samples", "num_eval_samples"):
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
    # 12 samples in batches of 4 = 3 steps per epoch: the run crosses an epoch boundary (and its evaluation), and the
    # checkpoint after step 2 is in the middle of epoch 0.
    common = ["--cache_dir", synthetic_cache, "--max_train_samples", "12", "--max_eval_samples", "6"]
    straight = tmp_path / "straight"
    train_script.main(tiny_args(tiny_clip, straight, *common, "--checkpointing_steps", "2", steps=4))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_2", resumed / "step_2")
    state = json.loads((resumed / "step_2" / "training_state.json").read_text())
    assert state["completed_steps"] == 2 and state["epoch"] == 0 and state["batches_in_epoch"] == 2
    # the resumed run uses dataloader workers: crops and order must not depend on them
    train_script.main(
        tiny_args(tiny_clip, resumed, *common, "--resume_from_checkpoint", "latest", "--dataloader_num_workers",
                  "2", "--checkpointing_steps", "2", steps=4)
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


def test_train_on_metadata_folders(tiny_clip, tmp_path):
    train_dir = write_blur_folder(tmp_path / "train", contents=3, seed=1)
    val_dir = write_blur_folder(tmp_path / "val", contents=2, seed=2)
    out = tmp_path / "run"
    results = train_script.main(tiny_args(tiny_clip, out, "--train_dir", str(train_dir), "--validation_dir",
                                          str(val_dir), "--mos_range", "1", "5"))
    assert results["split_protocol"] == "none" and results["num_train_samples"] == 12
    assert results["num_eval_samples"] == 8
    model = MPIQEModel.from_pretrained(out)
    assert (model.config.mos_min, model.config.mos_max) == (1.0, 5.0)


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


def test_skip_bad_samples_reports_and_trains(tiny_clip, tmp_path):
    train_dir = write_blur_folder(
        tmp_path / "train", contents=3, levels=3,
        bad_rows=[["images/missing.png", "3.0", "", "", "m"], ["images/broken.png", "2.0", "", "", "b"]],
    )
    (train_dir / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    results = train_script.main(
        tiny_args(tiny_clip, tmp_path / "run", "--train_dir", str(train_dir), "--skip_bad_samples")
    )
    skipped = "\n".join(results["skipped_samples"])
    assert "missing.png" in skipped and "broken.png" in skipped and "line 11" in skipped and "line 12" in skipped


def test_corrupt_image_at_decode_time_names_the_file(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=2, levels=2)
    (folder / "images" / "c1_l1.png").write_bytes(b"garbage")  # after loading: only decoding can notice
    ds = load_iqa_dataset(str(folder))
    tester = MPIQEModelTester()
    config = tester.config()
    dataset = IQATrainingDataset(ds, MPIQEImageProcessor(crop_size=30, num_crops=2), config.scene_classes,
                                 config.distortion_classes)
    with pytest.raises(ValueError, match=r"c1_l1\.png"):
        dataset[3]
    skipping = IQATrainingDataset(ds, MPIQEImageProcessor(crop_size=30, num_crops=2), config.scene_classes,
                                  config.distortion_classes, skip_bad_samples=True)
    batch = collate_iqa_batch([skipping[i] for i in range(4)])
    assert batch["pixel_values"].shape == (3, 2, 3, 30, 30)


def test_dataset_items_and_evaluate_model(tmp_path):
    folder = write_blur_folder(tmp_path / "data", contents=2, levels=3)
    ds = load_iqa_dataset(str(folder))
    tester = MPIQEModelTester()
    model = tester.model()
    config = model.config
    processor = MPIQEImageProcessor(crop_size=30, num_crops=2)
    train = IQATrainingDataset(ds, processor, config.scene_classes, config.distortion_classes, seed=5)
    item = train[1]
    assert item["pixel_values"].shape == (2, 3, 30, 30)
    assert item["distortion_labels"].item() == config.distortion_classes.index("blur")
    assert train[0]["distortion_labels"].item() == -100 and train[0]["scene_labels"].sum() == 0
    assert item["mos"].item() == pytest.approx(ds[1]["mos_normalized"])
    # random crops: reproducible for one epoch, different in the next
    assert torch.equal(train[1]["pixel_values"], item["pixel_values"])
    train.set_epoch(1)
    assert not torch.equal(train[1]["pixel_values"], item["pixel_values"])
    sampler = EpochShuffleSampler(6, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(6)) and list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first

    evaluation = IQATrainingDataset(ds, processor, config.scene_classes, config.distortion_classes, train=False)
    loader = torch.utils.data.DataLoader(evaluation, batch_size=4, collate_fn=collate_iqa_batch)
    metrics = evaluate_model(model, loader)
    assert metrics["num_samples"] == 6 and -1.0 <= metrics["srcc"] <= 1.0 and "plcc" in metrics


def test_accelerate_launch_subprocess(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "launched"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "examples" / "train.py"),
        *tiny_args(tiny_clip, out, "--cache_dir", synthetic_cache, "--max_train_samples", "8",
                   "--max_eval_samples", "6", "--checkpointing_steps", "1", "--with_tracking",
                   "--report_to", "tensorboard"),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (out / "step_1").is_dir() and (out / "step_2").is_dir()
    assert json.loads((out / "all_results.json").read_text())["step"] == 2
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    MPIQEModel.from_pretrained(out)
