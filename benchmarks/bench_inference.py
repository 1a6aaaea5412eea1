"""
Scoring speed of MP-IQE against the bare CLIP vision tower it is built on, and bf16 against fp32.

Both models have ViT-B/16 sizes and random weights (no download); they score the same crops in the same dtype, timed
side by side in one process. Targets: MP-IQE / CLIP vision <= 1.15 at batch 1 and <= 1.10 at batch 16; bf16 / fp32
<= 0.5 on a CPU with bf16 matrix units. Also reports how closely bf16 scores follow fp32 scores.

    python benchmarks/bench_inference.py                 # CPU
    python benchmarks/bench_inference.py --device cuda   # GPU
"""

import argparse
import copy

import torch
from _common import describe_machine, print_table, time_side_by_side
from scipy.stats import spearmanr
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mpiqe_hf import MPIQEConfig, MPIQEModel


TARGETS = {1: 1.15, 16: 1.10}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--num_crops", type=int, default=8)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agreement_images", type=int, default=16)
    return parser.parse_args()


def build_models(device, dtype):
    torch.manual_seed(0)
    config = MPIQEConfig()
    mpiqe = MPIQEModel(config)
    vision_config = CLIPVisionConfig(**config.clip_config.vision_config.to_dict())
    vision_config.projection_dim = config.clip_config.projection_dim
    clip_vision = CLIPVisionModelWithProjection(vision_config)
    return mpiqe.to(device, dtype).eval(), clip_vision.to(device, dtype).eval()


def varied_images(count, size=224, seed=0):
    """Crops of smooth random scenes at increasing blur and noise levels, so scores spread out."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(
        torch.rand(count, 3, 14, 14, generator=generator), size=size, mode="bicubic"
    )
    levels = torch.linspace(0, 1, count).view(count, 1, 1, 1)
    noise = torch.randn(count, 3, size, size, generator=generator) * levels
    return ((base - 0.45) / 0.27 + noise).unsqueeze(1)


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    print(f"machine: {describe_machine(device)}")
    rows, seconds = [], {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        mpiqe, clip_vision = build_models(device, dtype)
        # As the pipeline and the CLI do: the image-independent text features once per run.
        text_features = mpiqe.get_text_features()
        for batch_size in args.batch_sizes:
            crops = torch.randn(batch_size, args.num_crops, 3, 224, 224, device=device, dtype=dtype)
            flat = crops.flatten(0, 1)
            timings = time_side_by_side(
                {
                    "mpiqe": lambda model=mpiqe, crops=crops: model(crops, text_features=text_features),
                    "clip": lambda model=clip_vision, flat=flat: model(pixel_values=flat),
                },
                repeats=args.repeats,
                device=device,
            )
            seconds[(dtype_name, batch_size)] = timings["mpiqe"]
            ratio = timings["mpiqe"] / timings["clip"]
            target = TARGETS.get(batch_size)
            rows.append(
                [
                    dtype_name,
                    batch_size,
                    f"{timings['mpiqe']:.3f}",
                    f"{timings['clip']:.3f}",
                    f"{ratio:.3f}",
                    f"<= {target}" if target else "-",
                    ("yes" if ratio <= target else "NO") if target else "-",
                ]
            )
        del mpiqe, clip_vision
    print(f"\nScoring {args.num_crops} crops per image, median of {args.repeats} side-by-side rounds")
    print_table(["dtype", "batch", "MP-IQE s", "CLIP vision s", "ratio", "target", "met"], rows)

    if {"float32", "bfloat16"} <= set(args.dtypes):
        # The bound any model can reach here: one ViT-B/16 MLP matrix product (8 crops x 201 tokens) in each dtype.
        activations = torch.randn(8 * 201, 768, device=device)
        weight = torch.randn(3072, 768, device=device)
        matmul = time_side_by_side(
            {
                "float32": lambda: torch.nn.functional.linear(activations, weight),
                "bfloat16": lambda: torch.nn.functional.linear(activations.bfloat16(), weight.bfloat16()),
            },
            repeats=20,
            device=device,
        )
        speed_rows = [["one 1608x768 @ 768x3072 matmul", f"{matmul['bfloat16'] / matmul['float32']:.3f}", "", ""]]
        for batch_size in args.batch_sizes:
            ratio = seconds[("bfloat16", batch_size)] / seconds[("float32", batch_size)]
            speed_rows.append(
                [f"MP-IQE scoring, batch {batch_size}", f"{ratio:.3f}", "<= 0.5", "yes" if ratio <= 0.5 else "NO"]
            )
        print("\nbf16 / fp32 time")
        print_table(["work", "ratio", "target", "met"], speed_rows)

        torch.manual_seed(0)
        model = MPIQEModel(MPIQEConfig()).eval()
        # Freshly initialised heads score every image almost alike; widen them so that scores spread across images.
        for name, param in model.named_parameters():
            if param.requires_grad and not name.endswith("norm.weight"):
                param.normal_(std=0.05)
        model.to(device)
        images = varied_images(args.agreement_images).to(device)
        reference = model(images).score.float().cpu()
        low = copy.deepcopy(model).to(torch.bfloat16)(images.to(torch.bfloat16)).score.float().cpu()
        print(f"\nfp32 vs bf16 scores over {args.agreement_images} varied images (score std {reference.std():.4f})")
        print_table(
            ["max abs diff", "SRCC"],
            [[f"{(low - reference).abs().max():.5f}", f"{spearmanr(reference, low).statistic:.4f}"]],
        )


if __name__ == "__main__":
    main()
