"""
Throughput of the input pipeline (decode a JPEG + cut 8 random 224 x 224 crops + normalise) with N DataLoader
workers, against the images per second the model trains on and scores, so that the loader is never the bottleneck.

The images are 1024 x 768 JPEGs written for the run (KonIQ-10k's size). Model speeds use ViT-B/16 sizes with random
weights.

    python benchmarks/bench_data.py --workers 0 1 2
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from _common import describe_machine, print_table, time_side_by_side
from bench_training import scoring_forward, training_step
from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel


class CropDataset(torch.utils.data.Dataset):
    def __init__(self, paths, processor):
        self.paths = paths
        self.processor = processor

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.processor(self.paths[index], crop_mode="random", return_tensors="pt")["pixel_values"][0]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    return parser.parse_args()


def write_images(folder, count):
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        small = generator.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC)
        path = f"{folder}/image_{index:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def loader_images_per_second(paths, processor, workers, batch_size):
    loader = torch.utils.data.DataLoader(
        CropDataset(paths, processor), batch_size=batch_size, num_workers=workers, shuffle=True
    )
    start = time.perf_counter()
    count = sum(batch.shape[0] for batch in loader)
    return count / (time.perf_counter() - start)


def main():
    args = parse_args()
    device = torch.device(args.device)
    print(f"machine: {describe_machine(device)}")
    processor = MPIQEImageProcessor()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(folder, args.num_images)
        loader_rows = [
            [workers, f"{loader_images_per_second(paths, processor, workers, args.batch_size):.1f}"]
            for workers in args.workers
        ]

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = MPIQEModel(MPIQEConfig()).to(device, dtype)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    pixel_values = torch.randn(args.batch_size, 8, 3, 224, 224, device=device, dtype=dtype)
    mos = torch.rand(args.batch_size, device=device)

    timings = time_side_by_side(
        {
            "train": lambda: training_step(model, optimizer, pixel_values, {"mos": mos}),
            "score": lambda: scoring_forward(model, pixel_values),
        },
        repeats=2,
        device=device,
    )
    model_rows = [
        ["training", f"{args.batch_size / timings['train']:.1f}"],
        ["scoring", f"{args.batch_size / timings['score']:.1f}"],
    ]
    print(f"\nInput pipeline: decode 1024x768 JPEG + 8 random crops, batches of {args.batch_size}")
    print_table(["workers", "images/s"], loader_rows)
    print(f"\nModel, {args.dtype}, batches of {args.batch_size} images x 8 crops")
    print_table(["mode", "images/s"], model_rows)
    best_loader = max(float(row[1]) for row in loader_rows)
    fastest_model = max(float(row[1]) for row in model_rows)
    print(f"\nbest loader / fastest model mode: {best_loader / fastest_model:.1f}x")


if __name__ == "__main__":
    main()
