"""
Crops per second of the per-crop training input, old against new, side by side, and of a training step.

- per-visit: `make_samples(visits=8)` samples through a shuffled `DataLoader`: every crop decodes its JPEG again,
  so an image is decoded 8 times an epoch (the input before `ShuffledCropBatches`).
- once per epoch: `IQATransform(visits=8)` + `ShuffledCropBatches` (what `examples/train.py` uses): an image is
  decoded once and its 8 crops go through the shuffle buffer.

Both make the same crops (same seeds) in batches of 64, from 1024 x 768 JPEGs written for the run (KonIQ-10k's
size), with each worker count asked for. The training step is MP-IQE at ViT-B/16 sizes with random weights, one
forward, backward and Adam step on a batch of per-crop samples (`bench_training.training_step`), float32 by
default. From the two, the script says how many decoding cores a GPU step rate (`--gpu_crops_per_second`, an
assumption, not measured here) needs with each input.

    python benchmarks/bench_data.py --workers 0 2
"""

import argparse
import csv
import math
import os
import tempfile

import numpy as np
import torch
from _common import describe_machine, print_table, time_side_by_side
from bench_training import training_step
from PIL import Image

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import load_iqa_dataset
from mpiqe_hf.training import (
    EpochShuffleSampler,
    IQATransform,
    ShuffledCropBatches,
    collate_iqa_batch,
    iqa_split,
    keep_samples,
    make_samples,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--num_crops", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64, help="Crops per batch of the input pipeline.")
    parser.add_argument("--train_batch_size", type=int, default=8, help="Crops per timed training step.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--gpu_crops_per_second",
        type=float,
        default=2500.0,
        help=(
            "Assumed crops per second a GPU training step consumes, for the cores estimate (default: an H100, ViT-B/16, "
            "bf16; see RESULTS.md)."
        ),
    )
    return parser.parse_args()


def write_dataset(folder, count):
    """`count` 1024 x 768 JPEGs in a metadata.csv folder, loaded without the decoding check: smooth random colour
    fields with grain, about 300 KB each, like KonIQ-10k's photos (JPEG decoding time grows with the detail coded,
    and smooth fields alone decode twice as fast)."""
    generator = np.random.default_rng(0)
    with open(f"{folder}/metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "mos"])
        for index in range(count):
            small = generator.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC), np.float32)
            grain = generator.normal(0.0, 12.0, size=field.shape)
            image = Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))
            image.save(f"{folder}/image_{index:04d}.jpg", quality=90)
            writer.writerow([f"image_{index:04d}.jpg", f"{1 + 4 * generator.random():.2f}"])
    return load_iqa_dataset(folder, verify_images=False)


def per_visit_loader(ds, transform, args, workers):
    samples = iqa_split(ds, range(len(ds)), transform, visits=args.num_crops)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=args.batch_size, shuffle=True, num_workers=workers, collate_fn=collate_iqa_batch
    )
    return lambda: sum(len(batch["index"]) for batch in loader)


def once_per_epoch_loader(ds, transform, args, workers):
    images = make_samples(range(len(ds))).with_transform(transform)
    sampler = EpochShuffleSampler(len(images), seed=0)
    loader = torch.utils.data.DataLoader(
        images,
        sampler=sampler,
        batch_size=args.batch_size // args.num_crops,
        collate_fn=keep_samples,
        num_workers=workers,
    )
    stream = ShuffledCropBatches(loader, sampler, visits=args.num_crops, batch_size=args.batch_size)
    return lambda: sum(len(batch["index"]) for batch in stream)


def main():
    args = parse_args()
    device = torch.device(args.device)
    print(f"machine: {describe_machine(device)}")
    config = MPIQEConfig()
    classes = {"scene_classes": config.scene_classes, "distortion_classes": config.distortion_classes}
    processor = MPIQEImageProcessor()
    crops_per_pass = args.num_images * args.num_crops
    functions = {}
    with tempfile.TemporaryDirectory() as folder:
        ds = write_dataset(folder, args.num_images)
        megabytes = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20
        per_visit = IQATransform(ds, processor, random_crops=True, **classes)
        all_visits = IQATransform(ds, processor, random_crops=True, visits=args.num_crops, **classes)
        for workers in args.workers:
            functions[("per-visit", workers)] = per_visit_loader(ds, per_visit, args, workers)
            functions[("once per epoch", workers)] = once_per_epoch_loader(ds, all_visits, args, workers)
        # One torch thread, as in a DataLoader worker: the buffer's batches are stacked in this process, and two
        # threads on a shared 2-core machine wait on each other far longer than the copy takes.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        timings = time_side_by_side(functions, repeats=args.repeats, device=torch.device("cpu"))
        torch.set_num_threads(threads)

    torch.manual_seed(0)
    model = MPIQEModel(config).to(device, getattr(torch, args.dtype))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    pixel_values = torch.randn(args.train_batch_size, 1, 3, 224, 224, device=device, dtype=model.dtype)
    labels = {"mos": torch.rand(args.train_batch_size, device=device)}
    step = time_side_by_side(
        {"train": lambda: training_step(model, optimizer, pixel_values, labels)}, repeats=2, device=device
    )["train"]
    step_rate = args.train_batch_size / step

    print(
        f"\nInput: {args.num_images} JPEGs 1024x768 ({1024 * megabytes / args.num_images:.0f} KB each) x "
        f"{args.num_crops} random 224 crops = {crops_per_pass} crops, batches of {args.batch_size}, median of "
        f"{args.repeats} passes"
    )
    rows, rates = [], {}
    for workers in args.workers:
        old = crops_per_pass / timings[("per-visit", workers)]
        new = crops_per_pass / timings[("once per epoch", workers)]
        rates[workers] = (old, new)
        rows.append([workers, f"{old:.0f}", f"{new:.0f}", f"{new / old:.2f}x"])
    print_table(["workers", "per-visit crops/s", "once per epoch crops/s", "new / old"], rows)
    print(
        f"\nTraining step, ViT-B/16 sizes, {args.dtype}, {args.train_batch_size} per-crop samples, median of 2: "
        f"{step:.2f} s = {step_rate:.2f} crops/s"
    )
    old_one, new_one = rates[min(args.workers)]
    print(
        f"input / training step, crops/s: per-visit {old_one / step_rate:.0f}x, once per epoch "
        f"{new_one / step_rate:.0f}x ({min(args.workers)} workers)"
    )
    if min(args.workers) == 0:
        # With no workers the main process decodes alone: crops per second of one core.
        need = args.gpu_crops_per_second
        print(
            f"\nA GPU step consuming {need:.0f} crops/s (assumed) needs about {math.ceil(need / old_one)} decoding "
            f"cores per-visit and {math.ceil(need / new_one)} once per epoch, at this CPU's {old_one:.0f} and "
            f"{new_one:.0f} crops/s per core."
        )


if __name__ == "__main__":
    main()
